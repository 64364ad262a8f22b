"""What a run does: scenarios, repetitions, durations (sans-IO).

A scenario is a client pod, a way to reach the server (its pod IP, or a local tunnel port) and the
lab phase it needs. Phase "ebpf" is the lab brought up normally; phase "iptables" is a second lab
brought up with `--capture iptables` (same ztunnels, iptables REDIRECT capture); phase "workers" a
third, eBPF capture with one ztunnel worker process per CPU (`--ztunnel-workers 0`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from bench.metrics import RATES

# Namespaces and pods of the bench lab (bench.labenv builds the spec from these).
PLAIN_NS = "bench-plain"        # not enrolled: direct, stunnel, haproxy
MESH_NS = "bench-mesh"          # ambit.io/dataplane-mode=ambient
HTTP_PORT = 80
IPERF_PORT = 5201
# Tunnel ports: client side on 127.0.0.1 in the client pod, server side on the server pod's IP.
TUNNEL_PORTS = {
    "stunnel": {"http": (2080, 9443), "iperf": (2201, 9444)},
    "haproxy": {"http": (3080, 9543), "iperf": (3201, 9544)},
}
# L7 scenarios (bench/l7.py): the proxies' ports in bench-plain/l7proxy; the mesh Service the
# waypoint routes for (web-v1/web-v2 in bench-mesh).
L7_PORTS = {"nginx": 8081, "haproxy": 8082}
# The same proxies' h2c (prior knowledge) listeners: one process serves both, on its own port each.
L7_H2_PORTS = {"nginx": 8083, "haproxy": 8084}
WEB_SERVICE = "web"


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    phase: str                  # "ebpf" | "iptables" | "workers"
    namespace: str
    client: str                 # pod name in `namespace`
    server: str = "server"
    tunnel: str = ""            # "", "stunnel" or "haproxy"
    mesh: bool = False          # ztunnel CPU/RSS apply
    l7: str = ""                # "", "nginx", "haproxy", "waypoint", "waypoint-resilient" or "waypoint-traced":
    #                             header routing to web-v1/web-v2 (HTTP only); the waypoint ones share one waypoint
    h2: bool = False            # the client speaks HTTP/2 (h2c, prior knowledge) to the L7 proxy

    @property
    def waypoint(self) -> bool:
        return self.l7.startswith("waypoint")

    @property
    def client_key(self) -> str:
        return f"{self.namespace}/{self.client}"

    @property
    def server_key(self) -> str:
        return f"{self.namespace}/{self.server}"


SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("direct", "no mesh: client pod on node1 to server pod on node2, plain TCP", "ebpf", PLAIN_NS, "client"),
    Scenario("ambit-l4-cross-node", "enrolled pods on node1 → node2: two ztunnels (eBPF capture)", "ebpf", MESH_NS,
             "client", mesh=True),
    Scenario("ambit-l4-same-node", "enrolled pods both on node2: one ztunnel, out and back in (eBPF capture)",
             "ebpf", MESH_NS, "client-local", mesh=True),
    Scenario("stunnel", "stunnel mTLS tunnel (TLS 1.3, P-256) client pod → server pod, node1 → node2", "ebpf",
             PLAIN_NS, "client", tunnel="stunnel"),
    Scenario("haproxy", "haproxy mTLS tunnel (TLS 1.3, P-256) client pod → server pod, node1 → node2", "ebpf",
             PLAIN_NS, "client", tunnel="haproxy"),
    Scenario("nginx-l7", "nginx as L7 proxy (1 worker): client (node1) → nginx pod (node1) → web-v1|v2 (node2) "
             "by x-canary, plaintext", "ebpf", PLAIN_NS, "client", l7="nginx"),
    Scenario("haproxy-l7", "haproxy mode http (1 thread): client (node1) → haproxy pod (node1) → web-v1|v2 (node2) "
             "by x-canary, plaintext", "ebpf", PLAIN_NS, "client", l7="haproxy"),
    Scenario("ambit-waypoint", "enrolled client (node1) → ztunnel → waypoint → ztunnel → web-v1|v2 (node2) by "
             "x-canary (VirtualService), mTLS HBONE both hops", "ebpf", MESH_NS, "client", mesh=True, l7="waypoint"),
    Scenario("ambit-waypoint-resilient", "as ambit-waypoint, with resilience in place: the VirtualService retries "
             "(3 attempts on 5xx,reset,connect-failure, per-try and route timeouts), the DestinationRule sets "
             "LEAST_REQUEST, connection-pool limits, outlier detection and a retry budget", "ebpf", MESH_NS, "client",
             mesh=True, l7="waypoint-resilient"),
    Scenario("ambit-waypoint-traced", "as ambit-waypoint, every request traced (100 % sampling: a server and a "
             "client span per request, exported over OTLP gRPC to a receiver pod); ambit-waypoint runs the same "
             "waypoint at 0 %", "ebpf", MESH_NS, "client", mesh=True, l7="waypoint-traced"),
    Scenario("nginx-l7-h2", "as nginx-l7 with the client speaking HTTP/2 (h2c, prior knowledge) to nginx "
             "(`listen ... http2`); HTTP/1.1 to web-v1|v2", "ebpf", PLAIN_NS, "client", l7="nginx", h2=True),
    Scenario("haproxy-l7-h2", "as haproxy-l7 with the client speaking HTTP/2 (h2c, prior knowledge) to haproxy "
             "(`bind ... proto h2`); HTTP/1.1 to web-v1|v2", "ebpf", PLAIN_NS, "client", l7="haproxy", h2=True),
    Scenario("ambit-waypoint-h2", "as ambit-waypoint with the client speaking HTTP/2 (h2c, prior knowledge) through "
             "ztunnel to the waypoint (nghttp2 codec); HTTP/1.1 to web-v1|v2", "ebpf", MESH_NS, "client", mesh=True,
             l7="waypoint", h2=True),
    Scenario("ambit-iptables-capture", "as ambit-l4-cross-node, lab brought up with --capture iptables",
             "iptables", MESH_NS, "client", mesh=True),
    Scenario("ambit-l4-workers", "as ambit-l4-cross-node, lab brought up with --ztunnel-workers 0: each ztunnel "
             "runs one worker process per CPU (SO_REUSEPORT)", "workers", MESH_NS, "client", mesh=True),
    Scenario("ambit-waypoint-workers", "as ambit-waypoint, in the workers lab: each ztunnel and the waypoint run one "
             "worker process per CPU (the waypoint's supervisor hands HBONE connections to its workers in turn)",
             "workers", MESH_NS, "client", mesh=True, l7="waypoint"),
)}

PHASES = ("ebpf", "iptables", "workers")


@dataclass
class Plan:
    mode: str                       # "quick" | "full"
    reps: int
    seconds: float                  # length of each timed load run
    warmup: float                   # h2load warm-up before each latency run (s)
    iperf_seconds: int
    rates: tuple[int, ...] = RATES
    per_client_rps: int = 100       # h2load's timer is exact only up to 100 req/s per client
    max_clients: int = 8            # connections for the max-rate run
    conn_clients: int = 8           # concurrent connections for the new-connections run
    hold_connections: int = 1000
    hold_deadline: float = 30.0     # seconds to open them; a mesh that needs longer is reported
    hold_reps: int = 0              # reps that also measure RSS with held connections (0 = every rep)
    max_seconds: float = 0.0        # length of the max-rate run (0 = `seconds`)
    push_pods: int = 1000
    push_changes: int = 50
    scenarios: list[str] = field(default_factory=lambda: list(SCENARIOS))
    profile: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def phase_scenarios(self, phase: str) -> list[Scenario]:
        return [SCENARIOS[s] for s in self.scenarios if SCENARIOS[s].phase == phase]

    def clients_for(self, rate: int) -> int:
        """One h2load process per client; enough clients that each stays at <= per_client_rps."""
        return max(1, -(-rate // self.per_client_rps))

    def estimate_seconds(self) -> float:
        """A rough wall-clock estimate, printed before the run starts."""
        def per_rep(sc: Scenario) -> float:
            iperf = 0.0 if sc.l7 else 2 * (self.iperf_seconds + 0.2)    # no iperf3 behind an HTTP proxy
            conns = 0.0 if sc.h2 else max(1.0, self.seconds) + 0.2      # no HTTP/1.0 run against h2c
            return (iperf + len(self.rates) * (self.seconds + self.warmup + 0.3)
                    + (self.max_seconds or self.seconds) + self.warmup + 0.3 + conns)
        phases = {SCENARIOS[s].phase for s in self.scenarios}
        lab = 10.0 * len(phases)
        mesh = sum(1 for s in self.scenarios if SCENARIOS[s].mesh)
        hold = 2.5 * mesh * (min(self.hold_reps, self.reps) if self.hold_reps else self.reps)
        push = 2.0 * self.reps if self.push_pods else 0.0
        return sum(per_rep(SCENARIOS[s]) for s in self.scenarios) * self.reps + lab + hold + push


def make_plan(quick: bool = False, reps: int | None = None, scenarios: list[str] | None = None,
              seconds: float | None = None, profile: bool = False) -> Plan:
    if quick:
        plan = Plan(mode="quick", reps=3, seconds=1.0, warmup=0.2, iperf_seconds=1, push_changes=20, hold_deadline=10.0,
                    hold_reps=1, max_seconds=0.5)
    else:
        plan = Plan(mode="full", reps=3, seconds=5.0, warmup=1.0, iperf_seconds=5)
    if reps is not None:
        if reps < 1:
            raise ValueError(f"--reps: {reps} must be at least 1")
        plan.reps = reps
    if seconds is not None:
        if seconds <= 0:
            raise ValueError(f"--seconds: {seconds} must be positive")
        plan.seconds = seconds
        plan.iperf_seconds = max(1, round(seconds))
    if scenarios:
        unknown = [s for s in scenarios if s not in SCENARIOS]
        if unknown:
            raise ValueError(f"--scenario: unknown {', '.join(unknown)} (known: {', '.join(SCENARIOS)})")
        plan.scenarios = [s for s in SCENARIOS if s in scenarios]
    plan.profile = profile
    return plan
