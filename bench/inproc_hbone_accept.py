"""CPU per NEW mTLS connection accepted by `HBONEServer`, in one process (uvloop), without the lab.

Why: ztunnel's and the waypoint's in-process benches pool their HBONE connections, so a change to
how the HBONE listener accepts and handshakes (ambit/dataplane/acceptloop.py) barely shows there.
Here a client opens `--conns` connections (`--concurrency` at a time) to a real `HBONEServer`:
TLS 1.3 with certificates from a real in-process CA, the server's checks and its HTTP/2 SETTINGS,
then the client closes. The server's certificate comes from an `IdentityManager` as ztunnel's and
the waypoint's do, through the certificate gate the listener asks before each handshake (in trees
that have one: ambit/dataplane/identity/wait.py), so the common case (certificate held) is what is
measured. Prints process CPU µs per connection (client and server; the client's
share is the same in every tree), best of `--runs`. Compare trees by running it alternately with
each on PYTHONPATH.

    .venv/bin/python bench/inproc_hbone_accept.py [--conns 400] [--concurrency 8] [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import inspect
import socket
import time

import uvloop

from ambit.dataplane import tls
from ambit.dataplane.hbone import HBONEServer
from ambit.dataplane.identity import FetchResult, IdentityManager, WorkloadCertificate, make_key_and_csr
from controller.ca import CertificateAuthority, generate_root

TD = "cluster.local"


def issue(ca: CertificateAuthority, identity: str) -> WorkloadCertificate:
    key_pem, csr = make_key_and_csr(identity)
    chain = ca.sign_csr(csr, identity, dt.timedelta(hours=1))
    return WorkloadCertificate.from_pems(identity, key_pem, chain, ca.trust_bundle().pems())


class InProcessCA:
    """The identity manager's fetcher, answered by the in-process CA."""

    def __init__(self, ca: CertificateAuthority) -> None:
        self.ca = ca

    async def fetch(self, identity: str, csr_pem: bytes, ttl_seconds: int) -> FetchResult:
        return FetchResult(self.ca.sign_csr(csr_pem, identity, dt.timedelta(seconds=ttl_seconds)),
                           self.ca.trust_bundle().pems())


async def main(conns: int, concurrency: int, runs: int) -> None:
    ca = CertificateAuthority(generate_root(TD), TD)
    cache = tls.ContextCache()
    server_id = f"spiffe://{TD}/ns/demo/sa/server"
    identities = IdentityManager(InProcessCA(ca))
    await identities.get(server_id, 10)
    client_ctx = cache.client(issue(ca, f"spiffe://{TD}/ns/demo/sa/client"))
    client_ctx.check_hostname = False
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]

    async def reject(*_a: object) -> None:
        return None

    def server_context() -> object:
        cert = identities.current(server_id)
        assert cert is not None
        return cache.server(cert)

    kw = {}
    if "certificate_gate" in inspect.signature(HBONEServer).parameters:
        from ambit.dataplane.identity.wait import IdentityGate
        kw["certificate_gate"] = IdentityGate(identities, lambda: server_id)
    server = HBONEServer(sock, server_context, reject, **kw)  # type: ignore[arg-type]
    await server.start()

    async def one() -> None:
        _r, w = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx, server_hostname="x")
        w.transport.abort()

    async def worker(n: int) -> None:
        for _ in range(n):
            await one()

    best = float("inf")
    for _ in range(runs):
        t0 = time.process_time()
        await asyncio.gather(*(worker(conns // concurrency) for _ in range(concurrency)))
        best = min(best, (time.process_time() - t0) / (conns // concurrency * concurrency))
    await server.close(grace=1)
    await identities.close()
    print(f"CPU per new mTLS connection (best of {runs} x {conns}): {best * 1e6:.1f} µs")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--conns", type=int, default=400)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as r:
        r.run(main(a.conns, a.concurrency, a.runs))
