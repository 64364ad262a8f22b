"""A browser app on another origin calling an API through the ingress gateway: run by
tests/lab/test_ingress.py inside the lab's "outside" netns (`ip netns exec ... python this.py`),
so headless Chromium reaches the gateway as a client on the internet would.

For each page port given, it serves an empty page at http://localhost:<port>/ (that page's origin),
opens it in Chromium and runs `fetch(url, {method: "PUT", headers: {"x-token": ...}})`, which a
browser sends only after a preflight its CORS rules accept. Prints one JSON object: per port, the
response's status and body, or the error the browser gave the script (a CORS refusal is a
TypeError, "Failed to fetch").

    python browser_cors.py URL GATEWAY_HOST GATEWAY_IP PORT [PORT ...]
"""

from __future__ import annotations

import http.server
import json
import shutil
import sys
import threading
from typing import Any

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

FETCH = """
const done = arguments[arguments.length - 1];
fetch(arguments[0], {method: "PUT", headers: {"x-token": "t"}, body: "hello"})
  .then(r => r.text().then(t => done({status: r.status, body: t})))
  .catch(e => done({error: String(e)}));
"""


class _Page(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        body = b"<!doctype html><title>app</title>"
        self.send_response(200)
        self.send_header("content-type", "text/html")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a: object) -> None:
        pass


def main(url: str, host: str, ip: str, ports: list[int]) -> dict[str, Any]:
    servers = [http.server.ThreadingHTTPServer(("127.0.0.1", p), _Page) for p in ports]
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "chromium"
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              f"--host-resolver-rules=MAP {host} {ip}"):
        opts.add_argument(a)
    drv = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "chromedriver"), options=opts)
    try:
        drv.set_script_timeout(15)
        out = {}
        for p in ports:
            drv.get(f"http://localhost:{p}/")
            out[str(p)] = drv.execute_async_script(FETCH, url)
        return out
    finally:
        drv.quit()
        for s in servers:
            s.shutdown()


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2], sys.argv[3], [int(p) for p in sys.argv[4:]])))
