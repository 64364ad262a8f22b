"""Attacker clients for tests/lab/test_trust_holes.py, run inside a lab pod (`ambit lab exec POD -- python THIS ...`).

Standalone on purpose (stdlib + the `h2` library only, no Ambit code): the attacker must not share
the defender's parsing or framing, or a bug on both sides would cancel out.

    spoof  SRC DST PORT MARKER        plaintext HTTP from a borrowed source address. The pods of a
                                      node share one L2 segment (br0), so the pod adds SRC to its
                                      eth0 and wins the return path with gratuitous ARP, as an
                                      attacker on a flat pod network does.
    hbone  DST PORT MARKER --cert --key --ca [--forwarded V]
                                      an HBONE client: TLS 1.3 + ALPN h2 with the given
                                      certificate, CONNECT DST:PORT (optionally with a
                                      `Forwarded` header), then an HTTP request through the tunnel.

Each prints one JSON line: what happened (status, reply text, error).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import socket
import ssl
import struct
import subprocess
import time

REQUEST = "GET /{marker} HTTP/1.1\r\nHost: echo\r\nx-marker: {marker}\r\nConnection: close\r\n\r\n"


# --- plaintext from a borrowed address --------------------------------------------------------------

def _mac(ifname: str) -> bytes:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        info = fcntl.ioctl(s.fileno(), 0x8927, struct.pack("256s", ifname.encode()[:15]))  # SIOCGIFHWADDR
    finally:
        s.close()
    return info[18:24]


def gratuitous_arp(ifname: str, ip: str, count: int = 4, gap: float = 0.4) -> None:
    """Announce `ip` at this pod's MAC (requests and replies, sender == target): neighbours that
    hold an entry for `ip` move it to us once their ARP lock time (1 s) has passed."""
    mac, addr = _mac(ifname), socket.inet_aton(ip)
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    try:
        s.bind((ifname, 0x0806))
        for i in range(count):
            for op in (1, 2):
                arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, op, mac, addr, b"\0" * 6, addr)
                s.send(b"\xff" * 6 + mac + struct.pack("!H", 0x0806) + arp)
            if i < count - 1:
                time.sleep(gap)
    finally:
        s.close()


def recv_all(sock: socket.socket, deadline: float) -> bytes:
    out = b""
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        if not chunk:
            break
        out += chunk
    return out


def spoof(src: str, dst: str, port: int, marker: str) -> dict:
    added = subprocess.run(["ip", "addr", "add", f"{src}/32", "dev", "eth0"], capture_output=True, text=True)
    try:
        gratuitous_arp("eth0", src)
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind((src, 0))
        s.settimeout(5)
        try:
            s.connect((dst, port))
        except OSError as e:
            return {"connected": False, "error": f"connect: {e}", "reply": ""}
        try:
            s.sendall(REQUEST.format(marker=marker).encode())
            reply = recv_all(s, time.monotonic() + 5)
            return {"connected": True, "error": "", "reply": reply.decode(errors="replace")}
        except OSError as e:
            return {"connected": True, "error": f"{type(e).__name__}: {e}", "reply": ""}
        finally:
            s.close()
    finally:
        if added.returncode == 0:
            subprocess.run(["ip", "addr", "del", f"{src}/32", "dev", "eth0"], capture_output=True)


# --- HBONE with h2 --------------------------------------------------------------------------------------

def hbone(dst: str, port: int, marker: str, cert: str, key: str, ca: str, forwarded: str | None) -> dict:
    import h2.config
    import h2.connection
    import h2.events

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.load_verify_locations(ca)
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["h2"])
    raw = socket.create_connection((dst, 15008), timeout=5)
    try:
        tls = ctx.wrap_socket(raw)
    except (ssl.SSLError, OSError) as e:
        raw.close()
        return {"status": 0, "error": f"TLS: {e}", "reply": ""}
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    headers = [(":method", "CONNECT"), (":authority", f"{dst}:{port}")]
    if forwarded is not None:
        headers.append(("forwarded", forwarded))
    conn.send_headers(1, headers)
    tls.sendall(conn.data_to_send())
    status, reply, error, ended = 0, b"", "", False
    deadline = time.monotonic() + 8
    sent_request = False
    try:
        while time.monotonic() < deadline and not ended:
            tls.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                data = tls.recv(65536)
            except TimeoutError:
                break
            if not data:
                error = error or "connection closed"
                break
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == 1:
                    hdrs = dict(ev.headers)
                    status = int(hdrs.get(":status", "0"))
                    if status != 200:
                        error = f"refused: {status} {hdrs.get('ambit-policy', '')}".strip()
                        ended = True
                    elif not sent_request:
                        conn.send_data(1, REQUEST.format(marker=marker).encode())
                        sent_request = True
                elif isinstance(ev, h2.events.DataReceived) and ev.stream_id == 1:
                    reply += ev.data
                    conn.acknowledge_received_data(ev.flow_controlled_length, 1)
                elif isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset)) and ev.stream_id == 1:
                    ended = True
                    if isinstance(ev, h2.events.StreamReset) and not status:
                        error = f"reset {ev.error_code}"
                elif isinstance(ev, h2.events.ConnectionTerminated):
                    ended, error = True, error or f"GOAWAY {ev.error_code}"
            out = conn.data_to_send()
            if out:
                tls.sendall(out)
            if status == 200 and b"\r\n\r\n" in reply:
                head, _, body = reply.partition(b"\r\n\r\n")
                length = next((int(h.split(b":", 1)[1]) for h in head.split(b"\r\n")
                               if h.lower().startswith(b"content-length:")), None)
                if length is not None and len(body) >= length:
                    ended = True
    except (ssl.SSLError, OSError) as e:
        error = error or f"{type(e).__name__}: {e}"
    finally:
        with contextlib.suppress(OSError):
            tls.close()
    return {"status": status, "error": error, "reply": reply.decode(errors="replace")}


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("spoof")
    sp.add_argument("src")
    sp.add_argument("dst")
    sp.add_argument("port", type=int)
    sp.add_argument("marker")
    hb = sub.add_parser("hbone")
    hb.add_argument("dst")
    hb.add_argument("port", type=int)
    hb.add_argument("marker")
    hb.add_argument("--cert", required=True)
    hb.add_argument("--key", required=True)
    hb.add_argument("--ca", required=True)
    hb.add_argument("--forwarded")
    a = ap.parse_args()
    if a.cmd == "spoof":
        result = spoof(a.src, a.dst, a.port, a.marker)
    else:
        result = hbone(a.dst, a.port, a.marker, a.cert, a.key, a.ca, a.forwarded)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
