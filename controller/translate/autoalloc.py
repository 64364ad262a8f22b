"""ServiceEntry address auto-allocation: a VIP for each host of an entry that has none.

As Istio (pilot/pkg/controllers/ipallocate, PILOT_ENABLE_IP_AUTOALLOCATE): a ServiceEntry with no
`spec.addresses`, `resolution` other than NONE and no opt-out label
`networking.istio.io/enable-autoallocate-ip: "false"` gets, for each host that is not a wildcard,
an address from a reserved prefix (240.240.0.0/16 by default), recorded in its
`status.addresses[]{value, host}`. The address then is that host's VIP: ztunnel routes a
connection to it as to a user `addresses` VIP, and the DNS proxy answers the host with it.

Why the allocation is a pure function of the snapshot, computed by every controller replica:
only the leader writes status, but every replica serves config, so all of them must agree on the
addresses before the leader's write lands (and after it, read them back from status). Hence:

1. **Kept.** An address already in `status.addresses` (ours, or written by Istio's istiod: a
   migration keeps its addresses) stays, if it is IPv4, inside the prefix, for a host the entry
   still lists, and not claimed first by an older entry (oldest by creationTimestamp, then
   namespace/name, Istio's order) or by any entry's user `spec.addresses`.
2. **New.** A host without one gets the first free address probing from a hash of
   `namespace/name/host`, entries taken oldest first. The hash (not "next free") means a new
   entry's address does not depend on how many entries came before it, and every replica picks
   the same one from the same snapshot until the leader has written it down.
3. **Cleared.** An entry that no longer qualifies (addresses added, resolution NONE, opted out,
   the feature off) has its status addresses cleared; they are not used as VIPs.

IPv6: Istio also allocates from 2001:2::/48. Ambit's data plane is IPv4 only, so none is
allocated; an IPv6 address istiod already wrote for a kept host stays in status, unused.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from controller.translate.index import age_key, labels_of, name_of, ns_of
from controller.validation import FieldError

Obj = dict[str, Any]
OPT_OUT_LABEL = "networking.istio.io/enable-autoallocate-ip"
DEFAULT_PREFIX = "240.240.0.0/16"


def parse_prefix(text: str) -> ipaddress.IPv4Network:
    """The allocation prefix, refused unless an IPv4 network of /8 to /30 written in canonical form."""
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as e:
        raise ValueError(f"not a CIDR prefix with no host bits set ({e})") from None
    if not isinstance(net, ipaddress.IPv4Network):
        raise ValueError("IPv6 is not allocated (Ambit's data plane is IPv4); give an IPv4 prefix")
    if not 8 <= net.prefixlen <= 30:
        raise ValueError(f"the prefix length must be 8 to 30, not {net.prefixlen} (a /31 or /32 leaves no address to allocate)")
    return net


@dataclass(frozen=True)
class AutoAllocate:
    """The controller's settings for it: on/off, and the IPv4 prefix addresses come from."""

    enabled: bool = True
    prefix: ipaddress.IPv4Network = field(default_factory=lambda: parse_prefix(DEFAULT_PREFIX))


@dataclass
class Allocation:
    """The outcome for every ServiceEntry of a snapshot, keyed by (namespace, name)."""

    vips: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)    # host -> its VIP
    status: dict[tuple[str, str], list[Obj]] = field(default_factory=dict)       # the status.addresses wanted
    errors: list[FieldError] = field(default_factory=list)


def not_allocated(se: Obj, enabled: bool) -> str:
    """Why an entry without `addresses` gets no auto-allocated address (Istio's
    ShouldV2AutoAllocateIPFromConfig false: off, resolution NONE, opted out), or "" when it gets one."""
    if not enabled:
        return "the controller runs with --no-ip-autoallocate"
    if ((se.get("spec") or {}).get("resolution") or "NONE") == "NONE":
        return "resolution NONE gets no auto-allocated address"
    opt = labels_of(se).get(OPT_OUT_LABEL)
    if isinstance(opt, str) and opt.lower() == "false":
        return f'the label {OPT_OUT_LABEL}: "false" opts it out of auto-allocation'
    return ""


def qualifies(se: Obj, settings: AutoAllocate) -> bool:
    """Istio's ShouldV2AutoAllocateIP: on, not resolution NONE, not opted out, no user addresses."""
    return not (se.get("spec") or {}).get("addresses") and not not_allocated(se, settings.enabled)


def hosts_of(se: Obj) -> list[str]:
    """The hosts that get an address: every listed one but wildcards (which Istio allocates only
    for DYNAMIC_DNS, which Ambit refuses), each once, in order."""
    out: list[str] = []
    for h in (se.get("spec") or {}).get("hosts") or []:
        if isinstance(h, str) and not h.startswith("*") and h not in out:
            out.append(h)
    return out


def status_addresses(se: Obj) -> list[Obj]:
    """`status.addresses` as written (entries without a string value or host dropped)."""
    got = (se.get("status") or {}).get("addresses") or []
    return [a for a in got if isinstance(a, dict) and isinstance(a.get("value"), str)
            and isinstance(a.get("host"), str)] if isinstance(got, list) else []


def _v4(text: str) -> ipaddress.IPv4Address | None:
    try:
        a = ipaddress.ip_address(text)
    except ValueError:
        return None
    return a if isinstance(a, ipaddress.IPv4Address) else None


def _user_addresses(entries: Iterable[Obj]) -> set[ipaddress.IPv4Address]:
    out = set()
    for se in entries:
        for a in (se.get("spec") or {}).get("addresses") or []:
            ip = _v4(a.split("/")[0]) if isinstance(a, str) and (a.endswith("/32") or "/" not in a) else None
            if ip is not None:
                out.add(ip)
    return out


def probe(prefix: ipaddress.IPv4Network, seed: str, taken: set[ipaddress.IPv4Address]) -> ipaddress.IPv4Address | None:
    """The first free host address of `prefix` from the hash of `seed` on (wrapping), network and
    broadcast addresses excluded; None when every one is taken."""
    first, size = int(prefix.network_address) + 1, prefix.num_addresses - 2
    start = int.from_bytes(hashlib.sha256(seed.encode()).digest()[:8], "big") % size
    for i in range(size):
        ip = ipaddress.IPv4Address(first + (start + i) % size)
        if ip not in taken:
            return ip
    return None


def allocate(entries: list[Obj], settings: AutoAllocate, reserved: Iterable[str] = (),
             age: Callable[[Obj], Any] = age_key) -> Allocation:
    """Every entry's auto-allocated VIPs and wanted `status.addresses`. `reserved`: addresses
    that are already something else's (Services' cluster IPs); an entry's user `spec.addresses`
    are reserved too. Pure: the same snapshot gives the same answer on every replica."""
    out = Allocation()
    ordered = sorted(entries, key=age)
    taken = _user_addresses(ordered) | {ip for ip in map(_v4, reserved) if ip is not None}
    wanting = [se for se in ordered if qualifies(se, settings)]
    wanted_ids = {id(se) for se in wanting}
    for se in ordered:
        if id(se) not in wanted_ids and status_addresses(se):
            out.status[(ns_of(se), name_of(se))] = []      # stale: cleared, never used
    for se in wanting:      # 1. kept, oldest first
        key, hosts, mine = (ns_of(se), name_of(se)), hosts_of(se), {}
        for a in status_addresses(se):
            ip = _v4(a["value"])
            if (ip is not None and a["host"] in hosts and a["host"] not in mine and ip in settings.prefix
                    and ip not in (settings.prefix.network_address, settings.prefix.broadcast_address)
                    and ip not in taken):
                taken.add(ip)
                mine[a["host"]] = str(ip)
        out.vips[key] = mine
    for se in wanting:      # 2. new, oldest first
        key, mine = (ns_of(se), name_of(se)), out.vips[(ns_of(se), name_of(se))]
        for host in hosts_of(se):
            if host in mine:
                continue
            ip = probe(settings.prefix, f"{key[0]}/{key[1]}/{host}", taken)
            if ip is None:
                out.errors.append(FieldError(f"ServiceEntry/{key[0]}/{key[1]}", "status.addresses",
                                             f"no address left in {settings.prefix} for host {host}: it gets no VIP "
                                             "(remove unused ServiceEntries, or give this one spec.addresses)"))
                continue
            taken.add(ip)
            mine[host] = str(ip)
        out.vips[key] = {h: mine[h] for h in hosts_of(se) if h in mine}
        out.status[key] = _wanted_status(se, out.vips[key])
    return out


def _wanted_status(se: Obj, vips: dict[str, str]) -> list[Obj]:
    """Each host's VIP, followed by the IPv6 addresses already written for it (istiod's: kept
    untouched, so a migration does not fight over them)."""
    v6 = [a for a in status_addresses(se) if ":" in a["value"]]
    return [x for h, ip in vips.items() for x in [{"value": ip, "host": h}] + [a for a in v6 if a["host"] == h]]


def status_differs(se: Obj, wanted: list[Obj]) -> bool:
    """Does `se`'s status.addresses differ from `wanted` (absent and [] are the same)?"""
    got = (se.get("status") or {}).get("addresses") or []
    return [{"value": a.get("value"), "host": a.get("host")} for a in got if isinstance(a, dict)] != wanted
