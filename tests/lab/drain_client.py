"""Run inside a client pod by tests/lab/test_waypoint_restarts.py: one HTTP/1.1 keep-alive connection
and one HTTP/2 (prior knowledge) connection to `http://HOST:PORT/`, each with one request in flight
that the echo backend answers `DELAY` seconds late, and one idle HTTP/1.1 keep-alive connection.
Prints `{"sent": true}` once both requests are sent (the test then stops the waypoint); when a line
comes on stdin (the waypoint is draining), the idle connection sends its next request and the
HTTP/2 connection a second stream. Then one JSON line says what each connection got: the response
status and HTTP/1's `Connection` header; HTTP/2's GOAWAYs and each stream's status."""

from __future__ import annotations

import http.client
import json
import socket
import sys
import threading
from pathlib import Path

import hpack
from hyperframe.frame import GoAwayFrame, HeadersFrame, RstStreamFrame, SettingsFrame

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))     # run by path, in a pod: the repository
from tests.support.h2frames import split_frames  # noqa: E402


def h1(host: str, port: int, out: dict, key: str, ready: threading.Event, go: threading.Event | None,
       headers: dict[str, str]) -> None:
    """One keep-alive connection: a first request (the connection is up and routed), then the one
    whose answer is the result, sent at once (`go` None: `ready` once it is sent) or when `go` is
    set (an idle connection: `ready` once the first is answered)."""
    c = http.client.HTTPConnection(host, port, timeout=30)
    try:
        c.request("GET", "/warm")
        c.getresponse().read()
        if go is not None:
            ready.set()
            go.wait()
        c.request("GET", f"/{key}", headers=headers)
        ready.set()
        r = c.getresponse()
        r.read()
        out[key] = {"status": r.status, "connection": r.getheader("connection")}
    except Exception as e:  # noqa: BLE001 - how it failed is the result
        out[key] = {"error": f"{type(e).__name__}: {e}"}
    finally:
        ready.set()
        c.close()


def h2c(host: str, port: int, delay: str, out: dict, sent: threading.Event, go: threading.Event) -> None:
    """Frames by hand (hyperframe, hpack): the `h2` library stops reading at a GOAWAY, but the
    streams it lets finish are answered after it, and that answer is what this checks. Stream 1 is
    the slow request in flight; stream 3 is sent on the same connection once `go` is set (the
    waypoint is draining). Records every GOAWAY's last stream id and each stream's status (or
    "refused": RST_STREAM)."""
    res: dict = {"goaways": [], "streams": {}}
    enc, dec = hpack.Encoder(), hpack.Decoder()

    def request(sid: int, headers: list[tuple[str, str]]) -> bytes:
        head = enc.encode([(":method", "GET"), (":path", "/slow"), (":scheme", "http"),
                           (":authority", f"{host}:{port}"), *headers])
        return HeadersFrame(sid, head, flags=["END_HEADERS", "END_STREAM"]).serialize()

    try:
        s = socket.create_connection((host, port), timeout=30)
        s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + SettingsFrame(0).serialize()
                  + request(1, [("x-echo-delay", delay)]))
        sent.set()
        s.settimeout(0.05)
        buf, ended, asked = b"", set(), False
        while ended != ({1, 3} if asked else {1}) or not go.is_set():
            if go.is_set() and not asked:
                s.sendall(request(3, []))
                asked = True
            try:
                data = s.recv(65536)
            except TimeoutError:
                continue
            if not data:
                break
            frames, buf = split_frames(buf + data)
            for frame in frames:
                if isinstance(frame, SettingsFrame) and "ACK" not in frame.flags:
                    s.sendall(SettingsFrame(0, flags=["ACK"]).serialize())
                elif isinstance(frame, GoAwayFrame):
                    res["goaways"].append(frame.last_stream_id)
                elif isinstance(frame, HeadersFrame):
                    res["streams"][str(frame.stream_id)] = int(dict(dec.decode(frame.data))[":status"])
                elif isinstance(frame, RstStreamFrame):
                    res["streams"][str(frame.stream_id)] = "refused"
                    ended.add(frame.stream_id)
                if "END_STREAM" in frame.flags:
                    ended.add(frame.stream_id)
        s.close()
    except Exception as e:  # noqa: BLE001 - how it failed is the result
        res["error"] = f"{type(e).__name__}: {e}"
    finally:
        sent.set()
    out["h2"] = res


def main() -> None:
    host, port, delay = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    out: dict = {}
    ready = [threading.Event(), threading.Event(), threading.Event()]
    go = threading.Event()
    threads = [threading.Thread(target=h1, args=(host, port, out, "h1", ready[0], None, {"x-echo-delay": delay})),
               threading.Thread(target=h2c, args=(host, port, delay, out, ready[1], go)),
               threading.Thread(target=h1, args=(host, port, out, "h1_idle", ready[2], go, {}))]
    for t in threads:
        t.start()
    for ev in ready:
        ev.wait()
    print(json.dumps({"sent": True}), flush=True)
    sys.stdin.readline()
    go.set()
    for t in threads:
        t.join()
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
