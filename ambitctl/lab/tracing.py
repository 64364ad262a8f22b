"""A trace backend for the lab: `ambit lab up --tracing`.

The collector (ambitctl/lab/collector.py: OTLP gRPC and HTTP ingest, recent spans in memory,
Zipkin's v2 query API) runs as a pod of the lab, `ambit-system/trace-collector` on the first node,
outside the mesh (ambit-system is not enrolled), so:

- every waypoint the lab starts exports its spans to it over OTLP gRPC (`--tracing-otlp
  IP:4317`), at 100 % sampling (`--tracing-sampling 100`: a lab is for looking at what happens;
  Istio's default is 1 %). The Telemetry API still decides first: a Telemetry resource naming a
  tracing provider overrides these flags for the requests it selects (waypoint/app.py);
- the controller's topology view reads it (`--tracing-url unix:<labdir>/tracing/query.sock
  --tracing-api zipkin`): the controller runs in the host netns, which has no route to pod IPs,
  so the collector serves its query API on a unix socket too;
- apps in the lab may export their own spans to it (OTLP gRPC IP:4317, or OTLP HTTP / Zipkin
  http://IP:9411), and find them in the same traces.

`lab down` kills it with the lab's other pods and removes its socket.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from ambitctl.lab.spec import LabSpec, PodSpec
from ambitctl.lab.state import LabState

NAMESPACE, POD = "ambit-system", "trace-collector"
GRPC_PORT, HTTP_PORT = 4317, 9411
SAMPLING = "100"


def home(base: Path) -> Path:
    return base / "tracing"


def query_socket(base: Path) -> Path:
    return home(base) / "query.sock"


def add_collector(spec: LabSpec, base: Path) -> PodSpec:
    """Add the collector's pod to the spec (before the lab is built), on the first node's next IP."""
    node = spec.nodes[0]
    taken = {p.ip for p in spec.pods}
    prefix = node.gateway_ip.rsplit(".", 1)[0]
    ip = next(f"{prefix}.{h}" for h in range(10, 250) if f"{prefix}.{h}" not in taken)
    pod = PodSpec(name=POD, namespace=NAMESPACE, node=node.name, service_account=POD,
                  labels={"app": POD}, annotations={},
                  command=[sys.executable, "-m", "ambitctl.lab.collector", "--grpc-port", str(GRPC_PORT),
                           "--http-port", str(HTTP_PORT), "--query-socket", str(query_socket(base))],
                  ports=[{"name": "otlp-grpc", "containerPort": GRPC_PORT},
                         {"name": "http", "containerPort": HTTP_PORT}], ip=ip)
    spec.pods.append(pod)
    spec.namespaces.setdefault(NAMESPACE, {})
    return pod


def enable(st: LabState, base: Path, pod: PodSpec) -> None:
    home(base).mkdir(parents=True, exist_ok=True)
    st.tracing = {"ip": pod.ip, "grpc_port": GRPC_PORT, "http_port": HTTP_PORT, "socket": str(query_socket(base))}


def waypoint_args(st: LabState) -> list[str]:
    """The tracing flags of a waypoint in this lab (none without `--tracing`)."""
    t = st.tracing
    return ["--tracing-otlp", f"{t['ip']}:{t['grpc_port']}", "--tracing-sampling", SAMPLING] if t else []


def controller_args(st: LabState) -> list[str]:
    """The topology view's trace backend (none without `--tracing`: the panel says so)."""
    return ["--tracing-url", f"unix:{st.tracing['socket']}", "--tracing-api", "zipkin"] if st.tracing else []


def url(st: LabState) -> str:
    """The collector's address as pods reach it (what `lab status` prints), or ""."""
    t = st.tracing
    return f"OTLP gRPC {t['ip']}:{t['grpc_port']}, http://{t['ip']}:{t['http_port']}" if t else ""


def remove(base: Path) -> None:
    shutil.rmtree(home(base), ignore_errors=True)
