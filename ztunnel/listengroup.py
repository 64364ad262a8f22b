"""Who else listens on a port in this netns: a sock_diag dump of TCP listeners with their marks.

Why: ztunnel's pod listeners are SO_REUSEPORT (so a surge roll's two ztunnels can share them), and
Linux lets any socket of the same uid join such a group. A pod running as root that bound 15006 or
15008 with SO_REUSEPORT before it was enrolled would then share ztunnel's listener, and the kernel
would hand it some of the inbound connections ambit_tc_in steers to ztunnel, past its policy. Every
ztunnel listener on those ports carries AMBIT_LISTENER_MARK (only CAP_NET_ADMIN can set a mark), so
ztunnel checks, once its listener is bound, that every listener on the port carries the mark; if one
does not, the port is squatted and ztunnel refuses the pod (as if the port were in use).

The dump runs in the calling thread's netns (the netlink socket is created there). The kernel
reports a socket's mark only to a requester with CAP_NET_ADMIN, which ztunnel has; without it the
answer lacks marks and `unmarked_listeners` raises rather than guess.
"""

from __future__ import annotations

import socket
import struct

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
TCP_LISTEN = 10
INET_DIAG_MARK = 15

_NLMSG = struct.Struct("=IHHII")            # len, type, flags, seq, pid
# inet_diag_req_v2: family, protocol, ext, pad, states; inet_diag_sockid (48 bytes)
_REQ = struct.Struct("=BBBxI48s")
# inet_diag_msg: family, state, timer, retrans; sockid: sport, dport (net order), src[16], dst[16],
# if, cookie[2]; expires, rqueue, wqueue, uid, inode
_MSG = struct.Struct("=BBBB2s2s16s16sI8sIIIII")
_RTA = struct.Struct("=HH")


def _align(n: int) -> int:
    return (n + 3) & ~3


def listener_marks(port: int) -> list[int | None]:
    """The mark of every IPv4/IPv6 TCP listener on `port` in this netns (None: not reported)."""
    out: list[int | None] = []
    for family in (socket.AF_INET, socket.AF_INET6):
        out += _dump(family, port)
    return out


def _dump(family: int, port: int) -> list[int | None]:
    req = _REQ.pack(family, socket.IPPROTO_TCP, 0, 1 << TCP_LISTEN, b"\0" * 48)
    msg = _NLMSG.pack(_NLMSG.size + len(req), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + req
    marks: list[int | None] = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG) as s:
        s.sendto(msg, (0, 0))
        while True:
            data = s.recv(65536)
            off = 0
            while off + _NLMSG.size <= len(data):
                length, mtype, _flags, _seq, _pid = _NLMSG.unpack_from(data, off)
                if mtype == NLMSG_DONE:
                    return marks
                if mtype == NLMSG_ERROR:
                    err = -struct.unpack_from("=i", data, off + _NLMSG.size)[0]
                    raise OSError(err, f"sock_diag dump failed: {err}")
                body = off + _NLMSG.size
                fields = _MSG.unpack_from(data, body)
                if struct.unpack("!H", fields[4])[0] == port:
                    marks.append(_mark(data, body + _MSG.size, off + length))
                off += _align(length)
                if length == 0:
                    return marks


def _mark(data: bytes, off: int, end: int) -> int | None:
    while off + _RTA.size <= end:
        rlen, rtype = _RTA.unpack_from(data, off)
        if rlen < _RTA.size:
            break
        if rtype == INET_DIAG_MARK:
            return struct.unpack_from("=I", data, off + _RTA.size)[0]
        off += _align(rlen)
    return None


def unmarked_listeners(port: int, mark: int) -> int:
    """How many listeners on `port` do not carry `mark` (a squatter's). Raises when the kernel does
    not report marks (no CAP_NET_ADMIN): the check cannot be made, so it is not assumed to pass."""
    marks = listener_marks(port)
    if any(m is None for m in marks):
        raise PermissionError("listener marks are not reported (ztunnel needs CAP_NET_ADMIN)")
    return sum(1 for m in marks if m != mark)
