"""The controller's validating admission webhook: `kubectl apply` of an invalid Istio or Ambit object
is refused by the API server, naming the object, the field and the reason, instead of being stored
and then refused by the controller in the object's status (docs/operations.md, "The admission
webhook").

- `review`: one AdmissionReview in, its answer out (sans-IO, the controller's own validation).
- `server`: the HTTPS endpoint the API server calls (`--webhook-listen`).
- `patcher`: keeps the ValidatingWebhookConfiguration's `caBundle` on the mesh roots, and switches
  its `failurePolicy` to `Fail` once a dry run proves the API server reaches the webhook.
"""

from __future__ import annotations


def parse_listen(listen: str) -> tuple[str, int]:
    """`HOST:PORT` (`[V6]:PORT`) as a socket address; ValueError naming what is wrong."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--webhook-listen {listen!r}: must be HOST:PORT with a port 1..65535")
    return host.strip("[]") or "0.0.0.0", int(port)
