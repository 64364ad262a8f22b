"""Locality load balancing: which of a cluster's endpoints a request may go to, by where they run
(DestinationRule `loadBalancer.localityLbSetting`; istio/istio:pilot/pkg/networking/core/
loadbalancer/loadbalancer.go `ApplyLocalityLoadBalancer`, Envoy's priority levels and locality
weighted load balancing with the overprovisioning factor 1.4).

A locality is "region/zone/subzone" (docs/waypoint.md, "Locality load balancing"). As Istio:

- Failover (the default, and `failover` / `failoverPriority`) applies only when the cluster has
  outlier detection: without it nothing ever leaves a priority, so Istio does not prioritise.
  Priorities: 0 same region, zone and subzone as the waypoint, 1 same zone, 2 same region, 3 any
  other; `failover` {from, to} regions: when the waypoint is in `from`, other regions that are not
  `to` drop to 4. `failoverPriority` labels: an endpoint's priority is the number of labels after
  the first one whose value differs from the waypoint's (`key=value`: from `value`); with
  `failover` too, the two combine (label priority * 5 + locality priority). Priorities are then
  renumbered without gaps.
- Traffic goes by Envoy's priority load: priority P's health is min(1, 1.4 * healthy / total);
  priorities are filled in order, each taking its health's share (normalised when the health of
  all priorities sums below 1) of what is left. So a priority with 1 ejected endpoint of 4
  (1.4 * 3/4 > 1) keeps all its traffic, one with 2 of 4 ejected keeps 70% and spills 30% to the
  next. Within the chosen priority the cluster's balancer picks among its healthy endpoints
  (Envoy picks a locality by weight first; Istio weighs each locality by its endpoint count, which
  is the same split while the priority's localities are healthy).
- `distribute` (from -> {to: weight}): the first rule whose `from` matches the waypoint applies
  (with or without outlier detection); an endpoint takes the weight of the first `to` its locality
  matches, shared among the endpoints that `to` matches; endpoints no `to` matches get no
  traffic. A locality's weight counts as weight * min(1, 1.4 * healthy / total) (Envoy's
  effective locality weight).
- Panic (`minHealthPercent`) per priority, as Envoy's: see `pick_hosts`.
- A route's `retries.retryRemoteLocalities`: retries leave the priorities already tried, as Istio
  configures Envoy (the retry priority `previous_priorities`, update_frequency 2): see
  `retry_priorities`.
- `enabled: false` turns all of it off.
- A Service's `trafficDistribution` (Service.traffic_distribution), when the DestinationRule sets
  no `localityLbSetting` (TrafficPolicy.locality_set), is a `failoverPriority` forced on without
  outlier detection (Istio's `GetEffectiveLbSetting`): PreferSameZone (and PreferClose) by region
  and zone, PreferSameNode by region, zone, subzone and node (`kubernetes.io/hostname`, which
  Istio adds to every proxy's and endpoint's labels, as the waypoint's places do: waypoint/app.py
  `_place_of`); Istio's
  leading `topology.istio.io/network` always matches in Ambit's single network, so it changes no
  priority. For such a Service, whatever its locality setting, Istio sends the UNREADY endpoints
  to Envoy as unhealthy (`ForcesSupportUnhealthyEndpoints`) and turns panic off: they count in
  their priority's total (`Plan.unready`, `health`), never receive traffic, and a zone with 1
  ready endpoint of 4 keeps 35% of the traffic rather than all of it.

Pure: the waypoint's locality and labels, the endpoints' localities and labels, ejection state
and the random draw are all passed in. A `Plan` is built once per endpoint set (the cluster
caches it); `pick_hosts` runs per request only for clusters where locality changes something.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ambit.topology import REGION_LABEL, SUBZONE_LABEL, TOPOLOGY_LABELS, ZONE_LABEL

OVERPROVISIONING = 1.4          # Envoy's default overprovisioning_factor (140 / 100)
UPDATE_FREQUENCY = 2            # Istio's previous_priorities update_frequency (retryRemoteLocalities)
NONE: frozenset[int] = frozenset()
NO_HOSTS: frozenset[str] = frozenset()
# The node a workload runs on, as Istio's AugmentLabels adds it to proxy and endpoint labels.
HOSTNAME_LABEL = "kubernetes.io/hostname"
# trafficDistribution -> the failoverPriority Istio gives it (without the network label: one network)
PREFER: dict[str, tuple[str, ...]] = {
    "PreferSameZone": (REGION_LABEL, ZONE_LABEL),
    "PreferClose": (REGION_LABEL, ZONE_LABEL),
    "PreferSameNode": (REGION_LABEL, ZONE_LABEL, SUBZONE_LABEL, HOSTNAME_LABEL),
}


@dataclass(frozen=True)
class Setting:
    """A cluster's locality settings, from its TrafficPolicy."""

    distribute: tuple[tuple[str, tuple[tuple[str, int], ...]], ...] = ()
    failover: tuple[tuple[str, str], ...] = ()
    failover_priority: tuple[str, ...] = ()
    outlier_detection: bool = False
    forced: bool = False        # trafficDistribution: failover without outlier detection (Istio's Force)

    @classmethod
    def of(cls, policy: Any, distribution: str = "", mesh: Any = None) -> Setting | None:
        """The setting of a TrafficPolicy for a Service whose `trafficDistribution` is
        `distribution`, under the mesh-wide `localityLbSetting` `mesh` (MeshSettings.locality, a
        TrafficPolicy with only its locality fields; None: unset),
        or None when locality changes nothing for it: disabled, or neither `distribute` nor outlier
        detection (Istio's `enableFailover`) nor a trafficDistribution. Istio's order
        (`GetEffectiveLbSetting`): the rule's own `localityLbSetting`, else the Service's
        trafficDistribution, else the mesh's, else the default (enabled)."""
        if not policy.locality_set:
            keys = PREFER.get(distribution) if distribution else None
            if keys is not None:
                return cls(failover_priority=keys, outlier_detection=policy.outlier_detection, forced=True)
            if mesh is not None:
                return cls._of_fields(mesh.locality_disabled, mesh.locality_distribute, mesh.locality_failover,
                                      mesh.locality_failover_priority, policy.outlier_detection)
        return cls._of_fields(policy.locality_disabled, policy.locality_distribute, policy.locality_failover,
                              policy.locality_failover_priority, policy.outlier_detection)

    @classmethod
    def _of_fields(cls, disabled: bool, distribute: Sequence[Sequence[Any]], failover: Sequence[Sequence[str]],
                   failover_priority: Sequence[str], outlier_detection: bool) -> Setting | None:
        if disabled or not (distribute or outlier_detection):
            return None
        return cls(tuple((str(f), tuple((str(k), int(w)) for k, w in dict(to).items())) for f, to in distribute),
                   tuple((str(a), str(b)) for a, b in failover), tuple(failover_priority), outlier_detection)


def split(locality: str) -> tuple[str, str, str]:
    r, _, rest = locality.partition("/")
    z, _, s = rest.partition("/")
    return r, z, s


def matches(locality: str, rule: str) -> bool:
    """Istio's `LocalityMatch`: `rule` is region[/zone[/subzone]], each part exact or `*`; parts the
    rule leaves out match anything."""
    lr, lz, ls = split(locality)
    rr, rz, rs = split(rule)
    return ((rr == "*" or rr == lr) and (rz in ("", "*") or rz == lz) and (rs in ("", "*") or rs == ls))


def locality_priority(own: str, other: str) -> int:
    """Istio's `LbPriority`: 0 same region, zone and subzone, 1 same zone, 2 same region, 3 else."""
    a, b = split(own), split(other)
    if a[0] != b[0]:
        return 3
    if a[1] != b[1]:
        return 2
    return 0 if a[2] == b[2] else 1


def topology_labels(locality: str, labels: Mapping[str, str]) -> dict[str, str]:
    """`labels` with the topology labels of `locality` (Istio adds them to endpoint and proxy labels
    for failoverPriority; the node's, `HOSTNAME_LABEL`, is already in a place's labels: see
    waypoint/app.py `_place`)."""
    out = dict(labels)
    for k, v in zip(TOPOLOGY_LABELS, split(locality), strict=True):
        if v:
            out[k] = v
    return out


def label_priority(keys: Sequence[str], own: Mapping[str, str], theirs: Mapping[str, str]) -> int:
    """failoverPriority: len(keys) minus the number of leading keys whose values agree (a label
    missing counts as ""; `key=value`: compared with `value`, not the waypoint's), as Istio's
    `applyFailoverPriorityPerLocality`."""
    for j, key in enumerate(keys):
        k, eq, want = key.partition("=")
        if (want if eq else own.get(k, "")) != theirs.get(k, ""):
            return len(keys) - j
    return 0


@dataclass(frozen=True)
class Plan:
    """What locality balancing does for one endpoint set: `groups` of hosts, and either their
    `weights` (distribute: groups are localities, picked by weight) or not (failover: groups are
    priorities in order, picked by Envoy's priority load). `unready`: the hosts of the groups that
    are not ready (a Service with trafficDistribution): never healthy (see `health`)."""

    groups: tuple[tuple[str, ...], ...]
    weights: tuple[float, ...] = ()
    unready: frozenset[str] = NO_HOSTS

    @functools.cached_property
    def priority(self) -> dict[str, int]:
        """Each host's priority (failover) or locality (distribute): its group's index. Computed
        on a plan's first retry that needs it (`retry_priorities`), then kept with the plan."""
        return {h: i for i, g in enumerate(self.groups) for h in g}


Place = tuple[str, Mapping[str, str]]       # an endpoint's (locality, labels)


class Places(tuple):  # type: ignore[type-arg]   # of Place
    """The places of a cluster's ready endpoints, in their order, and `unready`: the address and
    place of each endpoint that is not ready, for a Service whose trafficDistribution counts them
    (empty otherwise); `weights`: each ready endpoint's weight, when they are not all equal (empty
    otherwise: the balancers' unweighted paths). A tuple, so the request path passes it on as it
    passed the places before."""

    unready: tuple[tuple[str, Place], ...] = ()
    weights: tuple[int, ...] = ()

    def __new__(cls, places: Iterable[Place] = (), unready: Iterable[tuple[str, Place]] = (),
                weights: Iterable[int] = ()) -> Places:
        self = super().__new__(cls, places)
        if unready:
            self.unready = tuple(unready)
        w = tuple(weights)
        if len(set(w)) > 1:
            self.weights = w
        return self


def plan(setting: Setting, own: str, own_labels: Mapping[str, str], hosts: Sequence[str],
         places: Sequence[Place], unready: Sequence[tuple[str, Place]] = ()) -> Plan | None:
    """The plan for `hosts` (with `places[i]` the locality and labels of `hosts[i]`), and the
    endpoints that are not ready (`unready`: address and place; they count in their priority's
    or locality's total), seen from a waypoint at `own`; None when it changes nothing (one
    priority, no weights): the request path then skips locality entirely."""
    if unready:
        down = frozenset(a for a, _ in unready)
        p = plan(setting, own, own_labels, [*hosts, *(a for a, _ in unready)], [*places, *(pl for _, pl in unready)])
        return dataclasses.replace(p, unready=down) if p is not None else None
    if setting.distribute:
        return _distribute(setting, own, hosts, places)
    if not (setting.outlier_detection or setting.forced):
        return None
    prios: list[int] = []
    mine = topology_labels(own, own_labels) if setting.failover_priority else {}
    for _host, (loc, labels) in zip(hosts, places, strict=True):
        p = 0
        if mine:        # Istio skips failoverPriority for a proxy without labels
            p = label_priority(setting.failover_priority, mine, topology_labels(loc, labels))
        if not setting.failover_priority or setting.failover:
            lp = locality_priority(own, loc)
            if lp == 3:
                region = split(own)[0]
                for frm, to in setting.failover:
                    if frm == region:
                        if split(loc)[0] != to:
                            lp = 4
                        break
            p = p * 5 + lp
        prios.append(p)
    levels = sorted(set(prios))
    if len(levels) <= 1:
        return None
    return Plan(tuple(tuple(h for h, p in zip(hosts, prios, strict=True) if p == lv) for lv in levels))


def _distribute(setting: Setting, own: str, hosts: Sequence[str], places: Sequence[Place]) -> Plan | None:
    rule = next((to for frm, to in setting.distribute if matches(own, frm)), None)
    if rule is None:
        return None
    groups: dict[str, list[str]] = {}
    weight: dict[str, float] = {}
    taken: set[int] = set()
    for to, w in rule:
        idx = [i for i, (loc, _labels) in enumerate(places) if i not in taken and matches(loc, to)]
        taken.update(idx)
        for i in idx:       # the rule's weight, shared by the endpoints it matches (by locality)
            loc = places[i][0]
            groups.setdefault(loc, []).append(hosts[i])
            weight[loc] = weight.get(loc, 0.0) + w / len(idx)
    locs = sorted(groups)
    return Plan(tuple(tuple(groups[x]) for x in locs), tuple(weight[x] for x in locs))


def health(unready: frozenset[str], ejected: Callable[[str], bool] | None) -> Callable[[str], bool] | None:
    """Whether a host of a plan counts as healthy: ready (not in `unready`) and not ejected (by
    outlier detection, when the cluster has it); None when every host counts (`pick_hosts`).
    Built when the plan is, so a request pays no closure."""
    if unready and ejected is not None:
        return lambda h: h not in unready and not ejected(h)
    if unready:
        return lambda h: h not in unready
    if ejected is not None:
        return lambda h: not ejected(h)
    return None


def _availability(groups: Sequence[Sequence[str]], ok: Sequence[Sequence[str]]) -> list[float]:
    """Envoy's per-priority health: min(1, overprovisioning * healthy / total)."""
    return [min(1.0, OVERPROVISIONING * len(o) / len(g)) for o, g in zip(ok, groups, strict=True)]


def retry_priorities(p: Plan, tried: Sequence[str], healthy: Callable[[str], bool] | None,
                     update_frequency: int = UPDATE_FREQUENCY) -> frozenset[int]:
    """The priorities the next try of a request excludes, after tries to `tried` (in order), as
    Envoy's retry priority `previous_priorities`: the first `update_frequency` tries use the
    unmodified priority load; each try after a multiple of `update_frequency` tries excludes the
    priorities of every try so far (with 2: the third and fourth tries exclude those of the first
    two, the fifth and sixth those of the first four); the tries between keep the last exclusion.
    When an exclusion leaves no priority with a healthy endpoint, Envoy resets: nothing is
    excluded and the tries so far are forgotten (counting starts again from the next try).

    Pure, and recomputed per retry from `tried` with the health of now (Envoy keeps the state on
    the request and takes health at each update; the same unless an ejection changes between two
    tries). A `distribute` plan is one priority (its groups are localities): nothing to exclude;
    a host no longer in the plan counts for no priority (Envoy's priority mapping gives none)."""
    if p.weights or len(tried) < update_frequency:
        return NONE
    avail = _availability(p.groups, [[h for h in g if healthy is None or healthy(h)] for g in p.groups])
    where = p.priority
    excluded: set[int] = set()
    start = 0                   # the first try Envoy still counts (after a reset)
    for n in range(1, len(tried) + 1):
        k = n - start
        if k < update_frequency or k % update_frequency:
            continue
        excluded.update(where[h] for h in tried[start:n] if h in where)
        if not any(a > 0 for i, a in enumerate(avail) if i not in excluded):
            excluded.clear()
            start = n
    return frozenset(excluded)


def pick_hosts(p: Plan, healthy: Callable[[str], bool] | None, draw: Callable[[], float],
               panic_percent: float = 0.0, on_panic: Callable[[], None] | None = None,
               excluded: frozenset[int] = NONE) -> list[str] | None:
    """The hosts a request may go to: the healthy hosts of the priority (or locality) drawn, by
    `draw()` in [0, 1). `healthy` None: every host counts as healthy. None when no host is healthy.

    `panic_percent` (Envoy's healthy panic threshold, Istio's `minHealthPercent`; 0: off) works
    per priority, as Envoy's: while the priorities' normalised availability is below 100%, a
    priority drawn whose healthy share is below the threshold sends to all its hosts, ejected
    included (`on_panic` is called); with no healthy host anywhere, all load goes to priority 0,
    in panic. With `distribute` (one priority) a panic ignores the locality weights, as Envoy's
    locality pick does.

    `excluded` (a retry's `retry_priorities`): those priorities get no load, theirs is shared by
    the others by their availability, normalised as the unmodified load is (Envoy's
    previous_priorities); when that leaves no availability the unmodified load applies. Panic is
    decided on the unmodified availability, as Envoy's is (the retry priority changes only the
    priority load). Ignored with `distribute`."""
    ok = [[h for h in g if healthy is None or healthy(h)] for g in p.groups]
    if p.weights:
        n_ok, n_all = sum(map(len, ok)), sum(map(len, p.groups))
        if panic_percent and n_all and OVERPROVISIONING * n_ok < n_all and 100.0 * n_ok / n_all < panic_percent:
            if on_panic is not None:
                on_panic()
            return [h for g in p.groups for h in g]
        loads = [w * min(1.0, OVERPROVISIONING * len(o) / len(g))
                 for w, o, g in zip(p.weights, ok, p.groups, strict=True)]
        total = 1.0
    else:
        avail = _availability(p.groups, ok)
        total = min(1.0, sum(avail))
        if total <= 0:
            if panic_percent and p.groups:
                if on_panic is not None:
                    on_panic()
                return list(p.groups[0])
            return None
        spread, spread_total = avail, total
        if excluded:
            kept = [0.0 if i in excluded else a for i, a in enumerate(avail)]
            if any(kept):       # else Envoy falls back to the unmodified load
                spread, spread_total = kept, min(1.0, sum(kept))
        left, loads = 1.0, []
        for a in spread:
            share = min(left, a / spread_total)
            loads.append(share)
            left -= share
    whole = sum(loads)
    if whole <= 0:
        return None
    x = draw() * whole
    i = 0
    for j, load in enumerate(loads):     # the last loaded one if rounding runs past the end
        if load > 0:
            i = j
            if x < load:
                break
            x -= load
    if panic_percent and total < 1.0 and 100.0 * len(ok[i]) / len(p.groups[i]) < panic_percent:
        if on_panic is not None:
            on_panic()
        return list(p.groups[i])
    return ok[i]
