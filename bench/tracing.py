"""The tracing scenario's pieces (ambit-waypoint-traced against ambit-waypoint, bench/l7.py): a
span receiver pod (ambitctl/lab/otlp_receiver.py: a real OTLP gRPC server that counts what it
gets), the waypoint's tracing settings pointing at it, and the runtime switch between 0 % and
100 % sampling: the waypoint's `--tracing-sampling-file`, which it re-reads within a second.

Both waypoint scenarios run the same waypoint with the same provider; only the sampling differs,
so the pair measures what tracing every request costs (span objects, attributes, the batch
processor's export thread), not what a configured-but-idle tracer costs (one call and a random
draw per request, present in both)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from bench.plan import PLAIN_NS

REPO = Path(__file__).resolve().parents[1]
RECEIVER_MODULE = "ambitctl.lab.otlp_receiver"
RECEIVER = REPO / "ambitctl" / "lab" / "otlp_receiver.py"
RECEIVER_POD = "spans"
OTLP_GRPC_PORT = 4317
TRACED = "waypoint-traced"      # the L7Set name of the scenario that samples 100 %


def receiver_pod() -> dict[str, Any]:
    """The receiver as a pod of the plain (not enrolled) namespace on node2."""
    return {"name": RECEIVER_POD, "namespace": PLAIN_NS, "node": "node2", "serviceAccount": "spans",
            "labels": {"app": "spans"}, "command": [sys.executable, "-m", RECEIVER_MODULE, "--grpc-port",
                                                    str(OTLP_GRPC_PORT), "--http-port", "4318"],
            "ports": [{"name": "grpc", "containerPort": OTLP_GRPC_PORT}]}


def available() -> bool:
    return RECEIVER.exists()


def sampling_file(work: Path) -> Path:
    return work / "l7" / "tracing-sampling"


def waypoint_env(receiver_ip: str, sampling: Path) -> dict[str, str]:
    """The waypoint's tracing settings (its AMBIT_WAYPOINT_* environment): export to the receiver,
    sampling from the file (0 % until a traced scenario writes 100)."""
    return {"AMBIT_WAYPOINT_TRACING_OTLP": f"{receiver_ip}:{OTLP_GRPC_PORT}",
            "AMBIT_WAYPOINT_TRACING_SAMPLING": "0",
            "AMBIT_WAYPOINT_TRACING_SAMPLING_FILE": str(sampling)}


def sampling_for(l7_name: str) -> str:
    """What the sampling file holds while waypoint scenario `l7_name` runs."""
    return "100" if l7_name == TRACED else "0"


def set_sampling(sampling: Path, l7_name: str) -> None:
    sampling.parent.mkdir(parents=True, exist_ok=True)
    tmp = sampling.with_suffix(".tmp")
    tmp.write_text(sampling_for(l7_name) + "\n")
    tmp.replace(sampling)       # atomic: the waypoint never reads half a number
