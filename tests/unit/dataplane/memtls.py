"""A TLS handshake between two `ssl` contexts over memory BIOs (no sockets). Imports only the
standard library, so fresh-interpreter probes can use it without loading anything else."""

from __future__ import annotations

import ssl


def handshake(client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext,
              server_hostname: str = "10.0.0.2") -> tuple[ssl.SSLObject, ssl.SSLObject]:
    """Run the handshake to its end (or its failure, raised) and return (client, server)."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    c = client_ctx.wrap_bio(c_in, c_out, server_hostname=server_hostname)
    s = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        for obj in (c, s):
            try:
                obj.do_handshake()
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    return c, s
