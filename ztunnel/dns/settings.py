"""The DNS proxy's settings (`--dns-*`) and its upstream resolvers.

`--dns-upstream IP[:port],...` names the resolvers forwarded queries go to. Without it they are
the nameservers of ztunnel's own /etc/resolv.conf (in a cluster, the node pod's: kube-dns, by the
default dnsPolicy ClusterFirst), as Istio ztunnel reads its system configuration. A loopback
or link-local resolver is unreachable from a pod's netns, where forwarded queries are sent from:
given explicitly it is refused at start-up; found in resolv.conf it is skipped with a warning, and when
that leaves none, systemd-resolved's own list (/run/systemd/resolve/resolv.conf, the one kubelet
uses on such hosts) is read instead.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ambit.settings import non_negative, option, positive
from ztunnel.dns.upstream import Upstream

log = logging.getLogger("ambit.ztunnel.dns")

RESOLV_CONF = Path("/etc/resolv.conf")
SYSTEMD_RESOLV_CONF = Path("/run/systemd/resolve/resolv.conf")


def parse_upstream(text: str) -> Upstream:
    """`IP`, `IP:port`, `[IPv6]:port` or a bare IPv6 address; ValueError naming what is wrong."""
    text = text.strip()
    host, port = text, 53
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"{text!r} is not IP[:port]")
        if rest:
            port = _port(text, rest[1:])
    elif text.count(":") == 1:
        host, _, p = text.partition(":")
        port = _port(text, p)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{text!r} is not IP[:port] (a resolver's address, not a name)") from None
    return Upstream(str(ip), port)


def _port(text: str, p: str) -> int:
    if not p.isdigit() or not 0 < int(p) < 65536:
        raise ValueError(f"{text!r}: port {p!r} is not 1-65535")
    return int(p)


def unreachable(u: Upstream) -> str | None:
    """Why a pod's netns, where forwarded queries leave from, cannot reach `u`; None: it can."""
    ip = ipaddress.ip_address(u.ip)
    if ip.is_loopback:
        return "a loopback resolver is unreachable from the pods' netns, where forwarded queries are sent from"
    if ip.is_link_local:
        return "a link-local resolver is the node's interface's, unreachable from the pods' netns"
    return None


def _check_upstreams(values: tuple[str, ...]) -> str | None:
    for v in values:
        try:
            why = unreachable(parse_upstream(v))
        except ValueError as e:
            return str(e)
        if why:
            return f"{v}: {why}"
    return None


def resolv_conf_upstreams(path: Path = RESOLV_CONF, fallback: Path = SYSTEMD_RESOLV_CONF) -> list[Upstream]:
    """The non-loopback nameservers of `path` (warning about the loopback ones); `fallback`'s when
    `path` had only loopback ones (systemd-resolved's stub)."""
    try:
        servers = _nameservers(path)
    except OSError as e:
        log.warning("DNS proxy: cannot read %s (%s): forwarded queries will get SERVFAIL; set --dns-upstream", path, e)
        return []
    kept = [u for u in servers if unreachable(u) is None]
    skipped = [str(u) for u in servers if unreachable(u) is not None]
    if skipped:
        log.warning("DNS proxy: skipping nameserver(s) %s of %s: loopback or link-local, unreachable from a "
                    "pod's netns", ", ".join(skipped), path)
    if not kept and skipped and fallback.exists():
        try:
            kept = [u for u in _nameservers(fallback) if unreachable(u) is None]
        except OSError:
            kept = []
        if kept:
            log.info("DNS proxy: forwarding to %s's nameservers (%s)", fallback, ", ".join(map(str, kept)))
    if not kept:
        log.warning("DNS proxy: no usable upstream resolver in %s: forwarded queries will get SERVFAIL; "
                    "set --dns-upstream", path)
    return kept


def _nameservers(path: Path) -> list[Upstream]:
    """The `nameserver` lines of a resolv.conf (resolv.conf(5): a keyword and a value, `#` or `;`
    starting a comment). Read here rather than through dnspython's resolver, which would load the
    DNS codec at every ztunnel's start (ztunnel/dns/upstream.py)."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        words = line.split(None, 2)
        if len(words) < 2 or words[0] != "nameserver" or words[1][0] in "#;":
            continue
        try:
            out.append(parse_upstream(words[1].split("%", 1)[0]))
        except ValueError as e:
            log.warning("DNS proxy: skipping nameserver %s of %s: %s", words[1], path, e)
    return out


@dataclass(frozen=True)
class DnsSettings:
    """Flags `--dns-…` (environment AMBIT_ZTUNNEL_DNS_…)."""

    upstream: tuple[str, ...] = option(
        (), "upstream resolvers for the queries the DNS proxy does not answer itself, IP[:port] (comma-separated "
            "or repeated); default: the non-loopback nameservers of ztunnel's /etc/resolv.conf",
        check=_check_upstreams)
    upstream_timeout: float = option(2.0, "seconds each upstream resolver gets to answer a forwarded query before "
                                          "the next is tried (all failing: SERVFAIL)", check=positive)
    max_forwards_per_pod: int = option(
        128, "forwarded queries one pod may have waiting on the upstream at once; past it a query gets SERVFAIL at "
             "once (0: unlimited)", check=non_negative)

    def upstreams(self) -> list[Upstream]:
        """The upstreams to forward to (reads resolv.conf when none is given)."""
        if self.upstream:
            return [parse_upstream(v) for v in self.upstream]
        return resolv_conf_upstreams()


def describe(upstreams: Sequence[Upstream]) -> str:
    return ", ".join(map(str, upstreams)) or "none"
