"""`ambit.io/` labels and annotations Ambit does not read where they are written are said to be
ignored (`ambit apply`, `ambit analyze` AMB0138). Before, a typo in a capture exclusion or a label
written as an annotation was ignored without a word: the pod was captured after all, or its
traffic skipped the waypoint."""

from __future__ import annotations

from typing import Any

import pytest

from ambitctl.analyze import analyze
from controller.waypoints.advisories import advisories


def obj(kind: str, labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    md: dict[str, Any] = {"name": "x", "labels": labels or {}, "annotations": annotations or {}}
    if kind != "Namespace":
        md["namespace"] = "shop"
    o: dict[str, Any] = {"apiVersion": "v1", "kind": kind, "metadata": md}
    if kind == "Service":
        o["spec"] = {"clusterIP": "10.96.0.9", "selector": {"app": "x"}, "ports": [{"port": 80}]}
    if kind == "Pod":
        o["spec"] = {"nodeName": "node1"}
        o["status"] = {"phase": "Running", "podIP": "10.244.1.9"}
    return o


def notes(o: dict[str, Any]) -> dict[str, str]:
    return {a.path: a.reason for a in advisories([o]) if a.cause == "UnknownAmbitKey"}


@pytest.mark.parametrize("o, path, words", [
    (obj("Pod", annotations={"ambit.io/exclude-outbound-port": "5432"}),
     "metadata.annotations[ambit.io/exclude-outbound-port]", ('did you mean "ambit.io/exclude-outbound-ports"',)),
    (obj("Pod", annotations={"ambit.io/use-waypoint": "waypoint"}),
     "metadata.annotations[ambit.io/use-waypoint]", ("is read as a label on a Pod, not as an annotation",)),
    (obj("Pod", labels={"ambit.io/exclude-inbound-ports": "8080"}),
     "metadata.labels[ambit.io/exclude-inbound-ports]", ("is read as an annotation on a Pod, not as a label",)),
    (obj("Service", labels={"ambit.io/dataplane-mode": "ambient"}),
     "metadata.labels[ambit.io/dataplane-mode]", ("is read on Namespaces and Pods, not on a Service",)),
    (obj("Namespace", labels={"ambit.io/dataplane-mod": "ambient"}),
     "metadata.labels[ambit.io/dataplane-mod]", ('did you mean "ambit.io/dataplane-mode"',)),
    (obj("Namespace", labels={"ambit.io/team": "a"}), "metadata.labels[ambit.io/team]",
     ("Ambit reads no label ambit.io/team: it is ignored",)),
])
def test_a_key_ambit_does_not_read_there_is_said_to_be_ignored(o: dict[str, Any], path: str,
                                                               words: tuple[str, ...]) -> None:
    got = notes(o)
    assert list(got) == [path] and all(w in got[path] for w in words), got
    assert {f.code for f in analyze([o], complete=True) if f.path == path} == {"AMB0138"}


def test_the_keys_ambit_reads_or_writes_and_other_prefixes_are_not_reported() -> None:
    assert notes(obj("Pod", labels={"ambit.io/dataplane-mode": "ambient", "ambit.io/use-waypoint": "w",
                                    "istio.io/anything": "x", "app": "x"},
                     annotations={"ambit.io/exclude-outbound-ports": "5432", "ambit.io/exclude-inbound-ports": "1",
                                  "ambit.io/exclude-outbound-ip-ranges": "10.0.0.0/8",
                                  "ambient.istio.io/dns-capture": "true"})) == {}
    assert notes(obj("Namespace", labels={"ambit.io/dataplane-mode": "ambient", "ambit.io/use-waypoint": "w",
                                          "ambit.io/use-waypoint-namespace": "n",
                                          "ambit.io/ingress-use-waypoint": "true"})) == {}
    assert notes(obj("Service", labels={"ambit.io/use-waypoint": "w", "ambit.io/managed-by": "ambit"})) == {}
