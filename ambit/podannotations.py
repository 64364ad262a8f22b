"""Istio's boolean pod annotations of ambient mode, read one way by the node agent (which applies
them to capture) and the controller (whose advisories say what they give up). Pure, no I/O.

Istio reads them with CheckBooleanAnnotation, that is Go's strconv.ParseBool: "1", "t", "true",
"0", "f", "false" (Ambit also takes any case and surrounding blanks). Any other value counts as
absent, and Ambit says so: the decision carries a warning naming the annotation, the value and
what happens instead.

    ambient.istio.io/bypass-inbound-capture   "true": "ingress mode". The pod's plaintext inbound
        goes to the app without ztunnel (Istio's CNI leaves out its inbound REDIRECT); its outbound,
        its DNS and its inbound HBONE (port 15008, mesh clients) are captured as before. Meant for
        ingress controllers and other pods whose clients are outside the mesh.
"""

from __future__ import annotations

from dataclasses import dataclass

ANN_BYPASS_INBOUND = "ambient.istio.io/bypass-inbound-capture"
_TRUE = ("1", "t", "true")
_FALSE = ("0", "f", "false")


def parse_bool(raw: object) -> bool | None:
    """The value of a boolean annotation as Istio reads it; None when it is not a boolean."""
    value = raw.strip().lower() if isinstance(raw, str) else None
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    return None


def not_boolean(key: str, raw: object, instead: str) -> str:
    """The warning for a boolean annotation whose value is not one: what is done `instead`."""
    return f"annotation {key}={raw!r} is not a boolean (expected \"true\" or \"false\"): ignored, {instead}"


@dataclass(frozen=True)
class InboundBypass:
    enabled: bool
    warning: str = ""    # set when the annotation was present but not a boolean


def inbound_bypass(annotations: dict[str, str] | None) -> InboundBypass:
    """Whether a pod's plaintext inbound bypasses ztunnel (its bypass-inbound-capture annotation)."""
    ann = annotations or {}
    if ANN_BYPASS_INBOUND not in ann:
        return InboundBypass(False)
    raw = ann[ANN_BYPASS_INBOUND]
    value = parse_bool(raw)
    if value is None:
        return InboundBypass(False, not_boolean(ANN_BYPASS_INBOUND, raw, "inbound is captured (the default)"))
    return InboundBypass(value)
