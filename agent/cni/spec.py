"""The CNI protocol as a plugin sees it (CNI spec 1.0, containernetworking/cni SPEC.md): pure.

The runtime runs the plugin with the operation and the container in the environment (CNI_COMMAND,
CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME, CNI_ARGS, CNI_PATH) and the network configuration as JSON
on stdin; in a chain, the configuration carries the previous plugin's result as `prevResult`. A
chained plugin that changes no interface returns that result unchanged on ADD, prints nothing on
DEL and CHECK, and on failure prints an error object and exits non-zero.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0")
COMMANDS = ("ADD", "DEL", "CHECK", "VERSION")

# Well-known error codes (SPEC.md, "Error codes").
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENV = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11

# The environment each command requires (SPEC.md, "Parameters").
REQUIRED_ENV = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "VERSION": (),
}


class CniError(Exception):
    """A failure the runtime is told about: printed as the spec's error object, exit code 1."""

    def __init__(self, code: int, msg: str, details: str = ""):
        super().__init__(msg)
        self.code, self.msg, self.details = code, msg, details

    def to_json(self, cni_version: str) -> dict[str, Any]:
        out: dict[str, Any] = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out


@dataclass(frozen=True)
class K8sArgs:
    """The pod a sandbox is for, from CNI_ARGS (the kubelet's K8S_POD_* convention)."""

    namespace: str
    name: str
    uid: str = ""


@dataclass(frozen=True)
class Invocation:
    command: str
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    path: tuple[str, ...] = ()
    args: dict[str, str] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def cni_version(self) -> str:
        return str(self.config.get("cniVersion") or SUPPORTED_VERSIONS[-1])

    @property
    def prev_result(self) -> dict[str, Any] | None:
        prev = self.config.get("prevResult")
        return prev if isinstance(prev, dict) else None

    def k8s(self) -> K8sArgs | None:
        """The pod, or None when the runtime did not say (not a Kubernetes sandbox)."""
        ns, name = self.args.get("K8S_POD_NAMESPACE", ""), self.args.get("K8S_POD_NAME", "")
        if not ns or not name:
            return None
        return K8sArgs(ns, name, self.args.get("K8S_POD_UID", ""))


def parse_args(value: str) -> dict[str, str]:
    """CNI_ARGS: "KEY=VALUE;KEY=VALUE" (SPEC.md). A pair without '=' is a decoding error."""
    out: dict[str, str] = {}
    for part in value.split(";"):
        if not part:
            continue
        k, sep, v = part.partition("=")
        if not sep or not k:
            raise CniError(INVALID_ENV, f"CNI_ARGS: {part!r} is not KEY=VALUE")
        out[k] = v
    return out


def parse(environ: Mapping[str, str], stdin: bytes) -> Invocation:
    """The invocation, or a CniError with the spec's code for what is wrong with it."""
    command = environ.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        raise CniError(INVALID_ENV, f"CNI_COMMAND: {command!r} is not one of {', '.join(COMMANDS)}")
    missing = [k for k in REQUIRED_ENV[command] if not environ.get(k)]
    if missing:
        raise CniError(INVALID_ENV, f"{command}: missing environment variables: {', '.join(missing)}")
    config: dict[str, Any] = {}
    if command != "VERSION" or stdin.strip():
        try:
            config = json.loads(stdin or b"")
        except ValueError as e:
            raise CniError(DECODE_FAILURE, "cannot decode the network configuration on stdin", str(e)) from None
        if not isinstance(config, dict):
            raise CniError(DECODE_FAILURE, "the network configuration on stdin is not a JSON object")
    if command != "VERSION":
        version = str(config.get("cniVersion", ""))
        if version not in SUPPORTED_VERSIONS:
            raise CniError(INCOMPATIBLE_VERSION, f"cniVersion {version!r} is not supported "
                                                 f"(supported: {', '.join(SUPPORTED_VERSIONS)})")
        prev = config.get("prevResult")
        if prev is not None and not isinstance(prev, dict):
            raise CniError(DECODE_FAILURE, "prevResult is not a JSON object")
    return Invocation(command=command, container_id=environ.get("CNI_CONTAINERID", ""),
                      netns=environ.get("CNI_NETNS", ""), ifname=environ.get("CNI_IFNAME", ""),
                      path=tuple(p for p in environ.get("CNI_PATH", "").split(":") if p),
                      args=parse_args(environ.get("CNI_ARGS", "")), config=config)


def version_result(cni_version: str = SUPPORTED_VERSIONS[-1]) -> dict[str, Any]:
    return {"cniVersion": cni_version, "supportedVersions": list(SUPPORTED_VERSIONS)}


def pass_through(inv: Invocation) -> dict[str, Any]:
    """ADD's result: the previous plugin's, unchanged (this plugin adds no interface or address),
    stamped with the configuration's cniVersion as the spec requires of every result."""
    prev = inv.prev_result
    if prev is None:
        raise CniError(INVALID_CONFIG, "ambit-cni is a chained plugin: the configuration has no prevResult "
                                       "(list it after the plugin that creates the pod's interface)")
    return {**prev, "cniVersion": inv.cni_version}


def sandbox_ips(prev: Mapping[str, Any], ifname: str) -> list[str]:
    """The pod's addresses (no prefix length) from a result: those on the sandbox interface
    `ifname` when the result says which interface each is on, else all of them."""
    interfaces = prev.get("interfaces") or []
    out = []
    for ip in prev.get("ips") or []:
        addr = str((ip or {}).get("address", "")).split("/")[0]
        if not addr:
            continue
        idx = ip.get("interface")
        if isinstance(idx, int) and 0 <= idx < len(interfaces):
            iface = interfaces[idx] or {}
            if iface.get("name") != ifname or not iface.get("sandbox"):
                continue
        out.append(addr)
    return out
