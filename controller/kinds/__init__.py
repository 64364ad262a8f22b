"""The configuration kinds Ambit accepts: which apiVersions, names and schemas.

Every mesh kind is accepted verbatim under its upstream group (Istio, Gateway API) and under the
matching Ambit group (`security.ambit.io`, ...), which serves the same schema for clusters that do
not install istio.io CRDs. `KINDS` is the single registry the validator, the CLI, the Kubernetes
source and the CRD generator all read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from controller.kinds import (
    backendtls,
    core,
    gateway,
    istio_gateway,
    networking,
    object_rules,
    security,
    serviceentry,
    telemetry,
)
from controller.kinds.schema import AnyValue, Errors, Obj, Schema


@dataclass(frozen=True)
class KindSpec:
    kind: str
    plural: str
    short_names: tuple[str, ...]
    groups: tuple[tuple[str, tuple[str, ...]], ...]    # (group, versions); "" is the core group
    namespaced: bool
    body: Obj                                          # the object minus apiVersion/kind/metadata
    ambit_group: str = ""                              # set when Ambit serves a CRD for this kind
    mesh: bool = True                                  # configuration (vs. cluster state like Pods)
    aliases: tuple[str, ...] = field(default=())
    # checks of the whole object (metadata too), run once its fields are valid: istiod's rules that
    # read the object's namespace or annotations (controller.kinds.object_rules)
    object_checks: tuple[Callable[[dict, Errors], None], ...] = field(default=())

    def api_versions(self) -> list[str]:
        return [f"{g}/{v}" if g else v for g, vs in self.groups for v in vs]

    def accepts(self, api_version: str) -> bool:
        return api_version in self.api_versions()

    @staticmethod
    def group_of(api_version: str) -> str:
        return api_version.rsplit("/", 1)[0] if "/" in api_version else ""

    def qualified(self, api_version: str) -> str:
        """kubectl's display name: `virtualservice.networking.istio.io`, or `pod` for core kinds."""
        group = self.group_of(api_version) or (self.groups[0][0] if self.groups else "")
        return f"{self.kind.lower()}.{group}" if group else self.kind.lower()

    @property
    def spec_schema(self) -> Schema:
        return self.body.fields["spec"]

    def names(self) -> set[str]:
        groups = {g for g, _ in self.groups}
        base = {self.kind.lower(), self.plural, *self.short_names, *self.aliases}
        return base | {f"{n}.{g}" for n in (self.kind.lower(), self.plural) for g in groups if g}


def _mesh(spec: Schema) -> Obj:
    def missing_spec(value: dict, path: str, errs: Errors) -> None:
        """A kind whose spec has required fields refuses an object with no spec by naming them
        (`spec.servers: required field is missing`), rather than passing it to the translation
        to fail there. Not `required=("spec",)`: that would change the CRDs' schemas."""
        if value.get("spec") is None:
            spec.check({}, "spec", errs)

    return Obj({"spec": spec, "status": AnyValue()},
               checks=(missing_spec,) if isinstance(spec, Obj) and spec.required else ())


def _with_ambit(upstream: str, versions: tuple[str, ...], ambit: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    ambit_versions = tuple(v for v in versions if v in ("v1", "v1beta1"))
    return ((upstream, versions), (ambit, ambit_versions))


_EXPORTED = (object_rules.check_export_to_namespace,)
_SEC = ("security.istio.io", ("v1", "v1beta1"), "security.ambit.io")
_NET = ("networking.istio.io", ("v1", "v1beta1", "v1alpha3"), "networking.ambit.io")
_TEL = ("telemetry.istio.io", ("v1", "v1alpha1"), "telemetry.ambit.io")
GATEWAY_GROUP = "gateway.networking.k8s.io"

KINDS: list[KindSpec] = [
    KindSpec("AuthorizationPolicy", "authorizationpolicies", ("ap",), _with_ambit(*_SEC), True,
             _mesh(security.AuthorizationPolicySpec), ambit_group=_SEC[2]),
    KindSpec("PeerAuthentication", "peerauthentications", ("pa",), _with_ambit(*_SEC), True,
             _mesh(security.PeerAuthenticationSpec), ambit_group=_SEC[2]),
    KindSpec("RequestAuthentication", "requestauthentications", ("ra",), _with_ambit(*_SEC), True,
             _mesh(security.RequestAuthenticationSpec), ambit_group=_SEC[2]),
    KindSpec("VirtualService", "virtualservices", ("vs",), _with_ambit(*_NET), True,
             _mesh(networking.VirtualServiceSpec), ambit_group=_NET[2],
             object_checks=_EXPORTED),
    KindSpec("DestinationRule", "destinationrules", ("dr",), _with_ambit(*_NET), True,
             _mesh(networking.DestinationRuleSpec), ambit_group=_NET[2],
             object_checks=_EXPORTED),
    KindSpec("ServiceEntry", "serviceentries", ("se",), _with_ambit(*_NET), True,
             _mesh(serviceentry.ServiceEntrySpec), ambit_group=_NET[2],
             object_checks=_EXPORTED),
    KindSpec("Telemetry", "telemetries", ("telemetry",), _with_ambit(*_TEL), True,
             _mesh(telemetry.TelemetrySpec), ambit_group=_TEL[2]),
    KindSpec("HTTPRoute", "httproutes", (), ((GATEWAY_GROUP, ("v1", "v1beta1")),), True,
             _mesh(gateway.HTTPRouteSpec)),
    KindSpec("GRPCRoute", "grpcroutes", (), ((GATEWAY_GROUP, ("v1", "v1alpha2")),), True,
             _mesh(gateway.GRPCRouteSpec)),
    KindSpec("Gateway", "gateways", ("gtw",), ((GATEWAY_GROUP, ("v1", "v1beta1")),), True,
             _mesh(gateway.GatewaySpec), object_checks=(gateway.check_deployed_name,)),
    KindSpec("TLSRoute", "tlsroutes", (), ((GATEWAY_GROUP, ("v1", "v1alpha2")),), True,
             _mesh(gateway.TLSRouteSpec)),
    KindSpec("TCPRoute", "tcproutes", (), ((GATEWAY_GROUP, ("v1", "v1alpha2")),), True,
             _mesh(gateway.TCPRouteSpec)),
    KindSpec("ReferenceGrant", "referencegrants", ("refgrant",), ((GATEWAY_GROUP, ("v1", "v1beta1")),), True,
             _mesh(gateway.ReferenceGrantSpec)),
    KindSpec("GatewayClass", "gatewayclasses", ("gc",), ((GATEWAY_GROUP, ("v1", "v1beta1")),), False,
             _mesh(gateway.GatewayClassSpec)),
    KindSpec("BackendTLSPolicy", "backendtlspolicies", ("btlspolicy",), ((GATEWAY_GROUP, ("v1", "v1alpha3")),), True,
             _mesh(backendtls.BackendTLSPolicySpec)),
    # Istio's Gateway: the same kind name in another group. Listed after Gateway API's, so a bare
    # `gateway` means Gateway API's; `gateway.networking.istio.io` means this one.
    KindSpec("Gateway", "gateways", (), _with_ambit(*_NET), True,
             _mesh(istio_gateway.IstioGatewaySpec), ambit_group=_NET[2]),
    KindSpec("Namespace", "namespaces", ("ns",), (("", ("v1",)),), False, core.NamespaceBody, mesh=False),
    KindSpec("Pod", "pods", ("po",), (("", ("v1",)),), True, core.PodBody, mesh=False),
    KindSpec("Service", "services", ("svc",), (("", ("v1",)),), True, core.ServiceBody, mesh=False),
    KindSpec("EndpointSlice", "endpointslices", (), (("discovery.k8s.io", ("v1",)),), True,
             core.EndpointSliceBody, mesh=False),
    KindSpec("ServiceAccount", "serviceaccounts", ("sa",), (("", ("v1",)),), True,
             core.ServiceAccountBody, mesh=False),
    KindSpec("Node", "nodes", ("no",), (("", ("v1",)),), False, core.NodeBody, mesh=False),
    KindSpec("Secret", "secrets", (), (("", ("v1",)),), True, core.SecretBody, mesh=False),
    KindSpec("ConfigMap", "configmaps", ("cm",), (("", ("v1",)),), True, core.ConfigMapBody, mesh=False),
]

# Kinds are keyed by (group, kind): `Gateway` is both Gateway API's and Istio's. BY_KIND keeps the
# first spec of each kind name, for what only needs the name (is it a kind at all, its scope).
BY_GROUP_KIND: dict[tuple[str, str], KindSpec] = {(g, k.kind): k for k in KINDS for g, _ in k.groups}
BY_KIND: dict[str, KindSpec] = {}
for _k in KINDS:
    BY_KIND.setdefault(_k.kind, _k)


def spec_for(api_version: object, kind: object) -> KindSpec | None:
    """The spec serving `kind` in `api_version`'s group; for a group that does not serve it, the
    first spec of that kind name (so that the apiVersion error can name what is served)."""
    if not isinstance(kind, str):
        return None
    group = KindSpec.group_of(api_version) if isinstance(api_version, str) else ""
    return BY_GROUP_KIND.get((group, kind)) or BY_KIND.get(kind)


def known_kind(obj: object) -> bool:
    """Is `obj` a map whose `kind` names a kind Ambit reads? (False for a `kind` that is no string:
    a list or a map there is no kind, and no key of BY_KIND.)"""
    if not isinstance(obj, dict):
        return False
    kind = obj.get("kind")
    return isinstance(kind, str) and kind in BY_KIND


def spec_of(obj: object) -> KindSpec | None:
    return spec_for(obj.get("apiVersion"), obj.get("kind")) if isinstance(obj, dict) else None

_WAYPOINTS = ("Ambit's gateways are Gateway API Gateways (gateway.networking.k8s.io/v1): waypoints of class "
              "ambit-waypoint or istio-waypoint (e.g. `ambit waypoint apply -n NS`), ingress gateways of class "
              "ambit (docs/ingress.md)")

# Upstream kinds Ambit knows and does not support, keyed by (group, kind): each is refused with its
# reason rather than as an unknown kind.
UNSUPPORTED_KINDS: dict[tuple[str, str], str] = {
    ("networking.istio.io", "Sidecar"): "Sidecar is not supported by Ambit: it has no sidecars (ztunnel and "
                                        "waypoints carry all traffic)",
    ("networking.istio.io", "EnvoyFilter"): "EnvoyFilter is not supported by Ambit: its proxies are not Envoy",
    ("networking.istio.io", "WorkloadEntry"): "WorkloadEntry is not supported by Ambit: workloads are Kubernetes "
                                              "pods only",
    ("networking.istio.io", "WorkloadGroup"): "WorkloadGroup is not supported by Ambit: workloads are Kubernetes "
                                              "pods only",
    ("networking.istio.io", "ProxyConfig"): "ProxyConfig is not supported by Ambit: its proxies are not Envoy",
    ("extensions.istio.io", "WasmPlugin"): "WasmPlugin is not supported by Ambit: its proxies do not run Wasm",
    ("extensions.istio.io", "TrafficExtension"): "TrafficExtension is not supported by Ambit: its proxies do not "
                                                 "run extensions",
    (GATEWAY_GROUP, "UDPRoute"): "UDPRoute is not supported by Ambit: the mesh carries TCP only",
    (GATEWAY_GROUP, "ListenerSet"): f"ListenerSet is not supported by Ambit. {_WAYPOINTS}",
}


def unsupported_kind(api_version: object, kind: object) -> str | None:
    """The reason an upstream kind is refused, or None (a kind Ambit serves, or one it never heard of)."""
    if not isinstance(api_version, str) or not isinstance(kind, str):
        return None
    return UNSUPPORTED_KINDS.get((KindSpec.group_of(api_version), kind))


def by_name(name: str) -> KindSpec | None:
    """Resolve what a user types (`vs`, `virtualservices`, `VirtualService`, `dr.networking.istio.io`)."""
    low = name.lower()
    for k in KINDS:
        if low in k.names():
            return k
    return None


def all_names() -> list[str]:
    return sorted({n for k in KINDS for n in (k.kind.lower(), k.plural, *k.short_names)})
