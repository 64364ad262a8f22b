"""Traffic across a surge roll, run inside a client pod: a loop of short connections (one request
each) and one long-lived keep-alive connection sending a request every 0.2 s. Prints one JSON line
per request; stops when its stdin closes. tests/lab/test_surge.py reads the lines."""

from __future__ import annotations

import http.client
import json
import sys
import threading
import time

LOCK = threading.Lock()


def out(rec: dict) -> None:
    with LOCK:
        print(json.dumps(rec), flush=True)


def short_loop(host: str, port: int, stop: threading.Event) -> None:
    while not stop.is_set():
        t = time.time()
        c = http.client.HTTPConnection(host, port, timeout=10)
        try:
            c.request("GET", "/short", headers={"Connection": "close"})
            r = c.getresponse()
            r.read()
            out({"kind": "short", "ok": r.status == 200, "status": r.status, "t": t})
        except Exception as e:  # noqa: BLE001 - every failure is a result
            out({"kind": "short", "ok": False, "error": f"{type(e).__name__}: {e}", "t": t})
        finally:
            c.close()
        time.sleep(0.05)


def long_lived(host: str, port: int, stop: threading.Event) -> None:
    c = http.client.HTTPConnection(host, port, timeout=10)
    n = 0
    while not stop.is_set():
        t = time.time()
        try:
            c.request("GET", "/long")
            r = c.getresponse()
            body = json.loads(r.read())
            out({"kind": "long", "ok": r.status == 200, "n": n, "t": t, "port": c.sock.getsockname()[1],
                 "version": body.get("version")})
        except Exception as e:  # noqa: BLE001 - how the connection ended is the result
            out({"kind": "long", "ok": False, "n": n, "t": t, "errtype": type(e).__name__, "error": str(e)})
            return
        n += 1
        stop.wait(0.2)


class Running:
    """The script running in its pod. Its output is read as it comes: undrained, the pipe fills
    after about 40 s of requests, the script blocks in print and stops making connections (a test
    that waited long for the lab then saw none after its fault)."""

    def __init__(self, p) -> None:  # noqa: ANN001 - a subprocess.Popen
        self.p = p
        self.out: list[str] = []
        self.err: list[str] = []
        self.readers = [threading.Thread(target=self._read, args=(f, into), daemon=True)
                        for f, into in ((p.stdout, self.out), (p.stderr, self.err))]
        for r in self.readers:
            r.start()

    @staticmethod
    def _read(f, into: list[str]) -> None:  # noqa: ANN001 - a text pipe
        for line in f:
            into.append(line)

    def records(self) -> list[dict]:
        """The script's records so far (it goes on)."""
        return [json.loads(x) for x in list(self.out) if x.strip()]

    def communicate(self, input: str = "", timeout: float = 30) -> tuple[str, str]:  # noqa: A002 - Popen's name
        """Stop the script (EOF on its stdin) and return (its stdout, its stderr), as Popen's."""
        self.p.stdin.write(input)
        self.p.stdin.close()
        self.p.wait(timeout)
        for r in self.readers:
            r.join(timeout)
        return "".join(self.out), "".join(self.err)


def start(lab, host: str = "echo.demo.svc.cluster.local", port: int = 8080) -> Running:  # noqa: ANN001
    """(In the test process) run this script in the lab's demo/client pod; returns it once the
    script says it is ready. Stop it with `communicate(input="")`."""
    import subprocess

    from tests.lab.labctl import REPO
    p = subprocess.Popen(lab.exec_argv("demo/client", sys.executable, __file__, host, str(port)),
                         env=lab.env, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    if not line or json.loads(line) != {"ready": True}:
        p.kill()
        raise AssertionError(f"traffic did not start: {line!r} {p.stderr.read()}")
    return Running(p)


def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2])
    stop = threading.Event()
    threads = [threading.Thread(target=f, args=(host, port, stop)) for f in (short_loop, long_lived)]
    out({"ready": True})        # first: a fast short request must not print before it
    for th in threads:
        th.start()
    sys.stdin.read()
    stop.set()
    for th in threads:
        th.join()


if __name__ == "__main__":
    main()
