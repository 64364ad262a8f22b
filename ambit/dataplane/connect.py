"""TCP connect on the event loop, without the loop's `sock_connect`.

Why not `loop.sock_connect`: uvloop's resolves the address with getaddrinfo in libuv's thread pool
before connecting, a numeric IP too. Per connection that is a hand-off to a worker thread and back
(futex wake-ups, context switches, an extra loop iteration), and it was the largest single cost of
ztunnel's inbound delivery (docs/performance.md, round 6). Our callers always have an IP address.

Why check at once: a destination in the same netns (ztunnel delivering to the app) is reached over
loopback, where the kernel runs the whole handshake inside connect(). The socket is connected when
the call returns, although it says EINPROGRESS; getpeername() succeeds only once it is connected.
Then there is nothing to wait for: no future, no timer, no loop iteration.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket


def connect_started(s: socket.socket, dst: tuple[str, int]) -> bool:
    """Start a non-blocking connect of `s` to `dst`; True if it is already established.

    An immediate failure (a refused loopback connect) stays pending on the socket for
    `connect_finished` to raise."""
    err = s.connect_ex(dst)
    if err == 0:
        return True
    if err != errno.EINPROGRESS:
        raise OSError(err, os.strerror(err))
    try:
        s.getpeername()
    except OSError:
        return False
    return True


async def connect_finished(s: socket.socket) -> None:
    """Wait until a connect `connect_started` left in progress is done; raise its error."""
    loop = asyncio.get_running_loop()
    fd = s.fileno()
    done: asyncio.Future[None] = loop.create_future()
    loop.add_writer(fd, lambda: done.done() or done.set_result(None))
    try:
        await done
    finally:
        loop.remove_writer(fd)
    err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err:
        raise OSError(err, os.strerror(err))


async def connect(s: socket.socket, dst: tuple[str, int]) -> None:
    """Connect the non-blocking socket `s` to the IP address `dst` (callers bound the wait)."""
    if not connect_started(s, dst):
        await connect_finished(s)
