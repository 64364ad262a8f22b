"""The CLI's Kubernetes API client: every request bounded in time, none repeated after a timeout.

The official client sends a request with no timeout at all unless the call passes one, and its
urllib3 pool retries an idempotent request that timed out three more times. Against an API server
that accepts connections and never answers (a wedged apiserver, a dead `kubectl proxy`, a load
balancer with no backend) `ambit install`, `upgrade`, `uninstall` and `waypoint --kube` therefore
waited forever, and the read commands (`get`, `describe`, `analyze`, `status`...) for two minutes,
printing nothing. Here a request gets `CONNECT_TIMEOUT` to connect and `READ_TIMEOUT` for each
read unless its call asks otherwise, and a read that timed out is an error at once: the CLI
prints it and exits 1. A refused connection is retried once (a restarting API server).

The controller has its own clients (ambit.kube.client) whose watches must stay open: this
module is the command line's only.
"""

from __future__ import annotations

from typing import Any

CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 30.0


def _client_class() -> type:
    from kubernetes import client as kclient

    class BoundedApiClient(kclient.ApiClient):  # type: ignore[misc]
        """ApiClient whose requests default to the CLI's timeouts (every generated API method and
        every raw `call_api` goes through `call_api`)."""

        def call_api(self, method: str, url: str, header_params: Any = None, body: Any = None,
                     post_params: Any = None, _request_timeout: Any = None) -> Any:
            return super().call_api(method, url, header_params, body, post_params,
                                    _request_timeout=_request_timeout or (CONNECT_TIMEOUT, READ_TIMEOUT))

    return BoundedApiClient


def bounded(configuration: Any) -> Any:
    """An ApiClient on `configuration` (host, credentials, TLS already loaded) whose requests are
    bounded and not retried after a read timeout."""
    import urllib3
    configuration.retries = urllib3.Retry(total=None, connect=1, read=0, other=0, redirect=3)
    return _client_class()(configuration)


def describe(e: BaseException) -> str:
    """A transport failure in a few words ("read timed out: no answer within 30 s"), not urllib3's
    nested `HTTPConnectionPool(...): Max retries exceeded ... (Caused by ...)`."""
    from urllib3 import exceptions as ue
    reason = e.reason if isinstance(e, ue.MaxRetryError) and e.reason is not None else e
    if isinstance(reason, ue.NewConnectionError):     # (a ConnectTimeoutError subclass: first)
        return f"cannot connect: {str(reason).rsplit(': ', 1)[-1]}"
    if isinstance(reason, ue.ConnectTimeoutError):
        return "cannot connect: timed out"
    if isinstance(reason, ue.ReadTimeoutError):
        return "read timed out: it accepted the connection and did not answer in time"
    if isinstance(reason, ValueError):
        return f"its answer is not JSON: {reason}"
    return str(reason)
