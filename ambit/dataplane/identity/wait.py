"""An inbound handshake waits for its server certificate instead of being refused.

A TLS server picks its certificate from OpenSSL's servername callback (ambit/dataplane/tls.py,
`selecting_server_context`), which Python runs synchronously: it cannot wait. So a handshake that
arrived before the listener's identity had a certificate (a new pod whose certificate is being
fetched, a slow or briefly stopped CA, the new ztunnel of a surge roll that the kernel already
hands connections to) used to be refused with an alert: a failed connection where a slow one was
due. Outbound connections already wait (`IdentityManager.get`).

So the accept loop asks its `CertificateGate` before it starts the handshake
(ambit/dataplane/acceptloop.py, `Handshakes`): `held()` is a synchronous look-up that costs the
common case nothing more; when it says no, `wait(bound)` waits for the identity manager's fetch
(started, or cut short of its backoff, if it was not in flight) for at most `wait_bound(deadline)`:
the handshake's own deadline less a reserve for the handshake itself. The handshake then
starts with what is left of its deadline. If the certificate is still not there the handshake
goes on and is refused by the servername callback exactly as before (the alert, the log line).
The wait happens inside the handshake's task, which is already counted in the pending-handshake
bounds (`PendingHandshakes`): a flood of connections for a certificate-less identity evicts the
oldest waiters like any other pending handshakes and pins nothing more.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from ambit.dataplane.identity.manager import CertificateUnavailable, IdentityManager


class IdentityGate:
    """The `CertificateGate` (ambit/dataplane/acceptloop.py) for a listener serving `identity()` (called each time: a pod's identity follows
    its Workload) with certificates from `identities`."""

    def __init__(self, identities: IdentityManager, identity: Callable[[], str]) -> None:
        self.identities = identities
        self.identity = identity

    def held(self) -> bool:
        return self.identities.current(self.identity()) is not None

    async def wait(self, timeout: float) -> bool:
        with contextlib.suppress(CertificateUnavailable):
            await self.identities.get(self.identity(), timeout)
            return True
        return False
