"""The demo's walk-through steps, in order. Each prints what it shows; see ambit/lab/demo.py."""

from __future__ import annotations

from ambit.lab.demo import run_in, show_echo, step


def plain_routing() -> None:
    step("3. A request from demo/client to the echo service, by name, across nodes")
    for _ in range(4):
        show_echo(run_in("demo/client", "curl -s -m 5 http://echo.demo.svc.cluster.local:8080/"))
    step("4. The same from legacy/client (a namespace that is not in the mesh)")
    show_echo(run_in("legacy/client", "curl -s -m 5 http://echo.demo.svc.cluster.local:8080/"))


STEPS = [plain_routing]
