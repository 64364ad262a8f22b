"""The identity a component presents on the config stream; the controller scopes config by it."""

from __future__ import annotations

from dataclasses import dataclass

from ambit.api import config_pb2

KINDS = ("ztunnel", "agent", "waypoint")
MAX_FIELD = 253


@dataclass(frozen=True)
class NodeInfo:
    """Who is subscribing.

    kind: "ztunnel" | "agent" | "waypoint".
    name: the Kubernetes node name for ztunnel and agent (it decides which Workloads are local),
          the pod name for a waypoint.
    waypoint: "namespace/name" of the waypoint Gateway; required for, and only for, waypoints.
    instance_id: tells restarts of the same component apart in the controller's status.
    """

    kind: str
    name: str
    waypoint: str = ""
    instance_id: str = ""

    def validate(self) -> NodeInfo:
        """Raise ValueError naming the field and the reason; return self so calls can chain."""
        if self.kind not in KINDS:
            raise ValueError(f"node.kind: {self.kind!r} is not one of {', '.join(KINDS)}")
        for name in ("name", "waypoint", "instance_id"):
            value = getattr(self, name)
            if len(value) > MAX_FIELD or not value.isprintable():
                # They go into the controller's log lines and status: no control characters
                # (forged lines), no megabytes (a Kubernetes name is at most 253 characters).
                raise ValueError(f"node.{name}: must be at most {MAX_FIELD} printable characters, got "
                                 f"{value[:64]!r}{'...' if len(value) > 64 else ''} ({len(value)} characters)")
        if not self.name:
            raise ValueError(f"node.name: empty for a {self.kind} (it must name the node or pod)")
        if self.kind == "waypoint":
            ns, _, gw = self.waypoint.partition("/")
            if not ns or not gw:
                raise ValueError(f"node.waypoint: {self.waypoint!r} must be 'namespace/name' for a waypoint")
        elif self.waypoint:
            raise ValueError(f"node.waypoint: set to {self.waypoint!r} but kind is {self.kind}, not waypoint")
        return self

    @property
    def key(self) -> str:
        """Stable display key, e.g. 'ztunnel/node-1' or 'waypoint/ns/wp@pod-1'."""
        if self.kind == "waypoint":
            return f"waypoint/{self.waypoint}@{self.name}"
        return f"{self.kind}/{self.name}"

    def to_proto(self) -> config_pb2.Node:
        return config_pb2.Node(kind=self.kind, name=self.name, waypoint=self.waypoint, instance_id=self.instance_id)

    @classmethod
    def from_proto(cls, msg: config_pb2.Node) -> NodeInfo:
        return cls(kind=msg.kind, name=msg.name, waypoint=msg.waypoint, instance_id=msg.instance_id)
