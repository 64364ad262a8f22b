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


class KubeconfigError(RuntimeError):
    """The kubeconfig cannot be used: missing, not YAML, not UTF-8, or not shaped as one."""


# What the official loader raises on a kubeconfig that is not one: its own ConfigException, the
# file's absence, and, from parsing a malformed file without checking its shape, YAML, decoding and
# type errors (`clusters: 5` is a TypeError deep inside its merge).
_LOAD_ERRORS: tuple[type[BaseException], ...] = (OSError, UnicodeDecodeError, TypeError, AttributeError, KeyError,
                                                 ValueError)


def _load_errors() -> tuple[type[BaseException], ...]:
    import yaml
    from kubernetes import config as kconfig
    return (kconfig.ConfigException, yaml.YAMLError, *_LOAD_ERRORS)


def _where(kubeconfig: str | None) -> str:
    import os
    return kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"


def load(kubeconfig: str | None, context: str | None) -> Any:
    """The Configuration (server, credentials, TLS) of `context` in `kubeconfig` (default
    $KUBECONFIG, ~/.kube/config), as kubectl reads it; KubeconfigError naming the file and why."""
    from kubernetes import client as kclient
    from kubernetes import config as kconfig
    cfg = type.__call__(kclient.Configuration)      # a fresh one, as new_client_from_config makes
    try:
        kconfig.load_kube_config(config_file=kubeconfig, context=context, client_configuration=cfg)
    except _load_errors() as e:
        raise KubeconfigError(f"kubeconfig {_where(kubeconfig)}: {reason(e)}") from None
    return cfg


def contexts(kubeconfig: str | None) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The kubeconfig's contexts and the current one (kubeconfig.list_kube_config_contexts)."""
    from kubernetes import config as kconfig
    try:
        return kconfig.list_kube_config_contexts(config_file=kubeconfig)
    except _load_errors() as e:
        raise KubeconfigError(f"kubeconfig {_where(kubeconfig)}: {reason(e)}") from None


def reason(e: BaseException) -> str:
    """Why a kubeconfig could not be loaded, in one line."""
    from kubernetes import config as kconfig
    if isinstance(e, kconfig.ConfigException | OSError):
        return str(e)
    first = str(e).splitlines()[0] if str(e) else ""
    return f"not a usable kubeconfig ({type(e).__name__}: {first})"
