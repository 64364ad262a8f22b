"""httpbin, the sample app Istio's own tasks use, served by gunicorn (a real WSGI server).

PyPI's `httpbin` (the Flask app: /get, /headers, /status/{code}, /delay/{s}, /anything, ...) under
gunicorn's threaded worker, one process: a lab pod, not a production deployment. Istio's sample
listens on 8000 (its Service maps 8000 → 80 in the container; the lab's pods own their netns, so
the default here is 8000 directly).
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from gunicorn.app.base import BaseApplication


def wsgi_app() -> Any:
    # httpbin logs a warning at import that its optional Swagger UI (flasgger) is absent; the
    # endpoints the mesh tasks use do not need it.
    logging.getLogger("httpbin").setLevel(logging.ERROR)
    from httpbin import app
    return app


class Server(BaseApplication):
    def __init__(self, app: Any, options: dict[str, Any]) -> None:
        self.app, self.options = app, options
        super().__init__()

    def load_config(self) -> None:
        for k, v in self.options.items():
            self.cfg.set(k, v)

    def load(self) -> Any:
        return self.app


def options(port: int, threads: int = 8, access_log: str | None = None) -> dict[str, Any]:
    return {"bind": f"0.0.0.0:{port}", "workers": 1, "worker_class": "gthread", "threads": threads,
            "keepalive": 75, "graceful_timeout": 2, "accesslog": access_log, "errorlog": "-", "loglevel": "warning"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--threads", type=int, default=8)
    # gunicorn's own flag, as Istio's mirroring task starts httpbin with it ("-": stdout, the pod's log)
    ap.add_argument("--access-logfile", default=None, help="log each request there (- for stdout)")
    args = ap.parse_args()
    Server(wsgi_app(), options(args.port, args.threads, args.access_logfile)).run()


if __name__ == "__main__":
    main()
