"""Fuzzing what an API server (or something posing as one) answers a reflector (hypothesis): the
watch's event lines (`Reflector._line`, one per line of the stream, as `_watch` reads them) and a
list's pages (`Reflector._page`), fed as raw bytes into the decoding layer of a real `Reflector`
(its client is never called here; tests/unit/kube/test_kube_reflector.py runs the loop against the
API-server emulator).

Lines: valid events of every type, then JSON that is no event (lists, strings, numbers), events
whose type is no string or unknown, objects of the wrong shape (no metadata, metadata a list,
names that are numbers, empty or missing, namespaces and resourceVersions of other types, labels
that are no map of strings, data that is a string), BOOKMARK and ERROR events with odd bodies
(Status objects with code 410 as a number or a string, 504 "Too large resource version" with
causes of any shape), huge resourceVersions, deep nesting, bytes that are no UTF-8. Pages: the same
objects as items, items and metadata of other types, continue tokens and resourceVersions of any
type. What must hold:
- a line or page is applied, or refused with ValueError (the watch is opened again from the last
  resourceVersion) or the reflector's relist signal (410, "too large"); no other exception;
- a refused line changes nothing: the cache and the resourceVersion are what they were;
- whatever is applied leaves only whole objects in the cache (metadata an object, a non-empty
  string name, each under its own `namespace/name` key) and a resourceVersion that is a string,
  and the consumer is told only of such objects.
Three budgets:
- the unit suite: a few hundred examples each (a few seconds);
- `-m fuzz`: `AMBIT_FUZZ_EXAMPLES` examples each (default 600);
- a long local run: `python -m tests.unit.kube.test_watch_decode_fuzz --cases 200000`.
"""

from __future__ import annotations

import copy
import json
import random
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ambit.kube.client import make_api_client
from ambit.kube.reflector import Change, Reflector, _Gone
from ambit.kube.resource import Resource
from tests.support import fuzzing

UNIT_EXAMPLES = 300
LONG_EXAMPLES = fuzzing.fuzz_examples(600)   # (bounded: the unit suite runs it)
CLIENT = make_api_client("http://127.0.0.1:9")      # never called
PODS = Resource("", ("v1",), "pods", "Pod", True)
SELECTED = Resource("", ("v1",), "configmaps", "ConfigMap", True, label_selector="app=web,tier!=db",
                    data_keys=("ca.crt",), bounded_keys=("overlay",), key_bound=64, kept_labels=("app",))
RESOURCES = [PODS, SELECTED]


def pod(name: Any, ns: Any = "demo", rv: Any = "5", **extra: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "resourceVersion": rv, "labels": {"app": "web"}},
            "data": {"ca.crt": "x", "overlay": "y"}, **extra}


def fresh(resource: Resource) -> tuple[Reflector, list[Change]]:
    changes: list[Change] = []
    rf = Reflector(CLIENT, resource, changes.append)
    items, _, rv = rf._page(json.dumps({"metadata": {"resourceVersion": "10"},
                                        "items": [pod("a"), pod("b", rv="7")]}).encode())
    rf.state.objects = {f"demo/{o['metadata']['name']}": o for o in items}
    rf.state.resource_version = rv
    rf.state.version = "v1"
    return rf, changes


def whole(obj: Any, resource: Resource) -> bool:
    """A whole object (and, projected, a whole projection: `data` a map)."""
    md = obj.get("metadata") if isinstance(obj, dict) else None
    if not (isinstance(md, dict) and isinstance(md.get("name"), str) and md["name"]
            and isinstance(md.get("namespace", ""), str | None)):
        return False
    if resource.data_keys is None:
        return True
    omitted = obj.get("omittedData") or {}
    return (all(isinstance(obj.get(k) or {}, dict) for k in ("data", "binaryData", "omittedData"))
            and all(isinstance(k, str) for k in omitted.get("others", [])))


def check_state(rf: Reflector, changes: list[Change], seen: int) -> None:
    st = rf.state
    assert isinstance(st.resource_version, str), f"resourceVersion {st.resource_version!r} is no string"
    for key, obj in st.objects.items():
        assert whole(obj, rf.resource), f"a cached object that is not whole: {str(obj)[:200]}"
        md = obj["metadata"]
        assert key == f"{md.get('namespace') or ''}/{md['name']}", (key, md)
    for c in changes[seen:]:
        for obj in c.objects:       # (a DELETED one is the object as the server sent it, not projected)
            assert whole(obj, PODS if c.type == "DELETED" else rf.resource), f"the consumer was told of {str(obj)[:200]}"


def feed_lines(resource: Resource, lines: list[bytes]) -> None:
    rf, changes = fresh(resource)
    for line in lines:
        before = (copy.deepcopy(rf.state.objects), rf.state.resource_version)
        seen = len(changes)
        t0 = time.process_time()
        try:
            rf._line(line)
        except (ValueError, _Gone):
            assert (rf.state.objects, rf.state.resource_version) == before, "a refused line changed the cache"
            assert len(changes) == seen, "the consumer was told of a refused line"
        assert time.process_time() - t0 < 2.0, "one line took over 2 s of CPU"
        check_state(rf, changes, seen)


def feed_page(resource: Resource, raw: bytes) -> None:
    rf, _ = fresh(resource)
    try:
        items, cont, rv = rf._page(raw)
    except ValueError:
        return
    assert isinstance(cont, str) and isinstance(rv, str)
    for o in items:
        assert whole(o, resource), f"a list item that is not whole: {str(o)[:200]}"


# --- strategies ------------------------------------------------------------------------------------

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=8),
                    st.sampled_from(["", "a", "demo", "10", "0", "9" * 40, "-1"]))
json_values = st.recursive(scalars, lambda kids: st.one_of(st.lists(kids, max_size=3),
                                                           st.dictionaries(st.text(max_size=6), kids, max_size=3)),
                           max_leaves=12)
names = st.one_of(st.sampled_from(["a", "b", "c", "", "x" * 300]), json_values)
rvs = st.one_of(st.sampled_from(["11", "12", "", "0", "9" * 100, str(2**64)]), json_values)


@st.composite
def objects(draw: Any) -> Any:
    how = draw(st.integers(0, 9))
    if how <= 3:
        return pod(draw(st.sampled_from(["a", "b", "c"])), rv=draw(st.sampled_from(["11", "12", "13"])))
    if how == 4:
        return draw(json_values)
    o = pod(draw(names), draw(st.one_of(st.just("demo"), st.just(None), json_values)), draw(rvs))
    if draw(st.booleans()):
        o["metadata"]["labels"] = draw(st.one_of(st.dictionaries(st.sampled_from(["app", "tier"]),
                                                                 st.one_of(st.sampled_from(["web", "db"]), json_values)),
                                                 json_values))
    if draw(st.booleans()):
        o["data"] = draw(st.one_of(json_values, st.sampled_from(["ca.crt overlay", "abc"]),
                                   st.dictionaries(st.sampled_from(["ca.crt", "overlay", "z"]), json_values)))
    if draw(st.integers(0, 3)) == 0:
        o["binaryData"] = draw(st.one_of(json_values, st.sampled_from(["ca.crt overlay", "abc"])))
    if draw(st.integers(0, 4)) == 0:
        o["metadata"] = draw(json_values)
    if draw(st.integers(0, 6)) == 0:
        del o["metadata"]
    return o


status_bodies = st.one_of(
    st.fixed_dictionaries({"kind": st.just("Status"), "code": st.sampled_from([410, "410", 504, 500, None, 410.0])},
                          optional={"message": st.one_of(st.just("Too large resource version: 99"), json_values),
                                    "details": st.one_of(st.fixed_dictionaries({"causes": st.one_of(
                                        st.lists(st.one_of(st.just({"reason": "ResourceVersionTooLarge"}), json_values),
                                                 max_size=3), json_values)}), json_values)}),
    json_values)


@st.composite
def events(draw: Any) -> bytes:
    how = draw(st.integers(0, 11))
    if how <= 5:
        etype = draw(st.sampled_from(["ADDED", "MODIFIED", "DELETED", "ADDED", "MODIFIED"]))
        return json.dumps({"type": etype, "object": draw(objects())}).encode()
    if how == 6:
        return json.dumps({"type": "BOOKMARK", "object": draw(st.one_of(
            st.fixed_dictionaries({"metadata": st.fixed_dictionaries({"resourceVersion": rvs})}), json_values))}).encode()
    if how == 7:
        return json.dumps({"type": "ERROR", "object": draw(status_bodies)}).encode()
    if how == 8:
        return json.dumps(draw(st.one_of(json_values, st.fixed_dictionaries(
            {}, optional={"type": st.one_of(st.sampled_from(["ADDED", "added", "Foo", ""]), json_values),
                          "object": st.one_of(objects(), json_values)})))).encode()
    if how == 9:
        depth = draw(st.sampled_from([50, 900, 5000, 100_000]))
        return (b'{"type": "ADDED", "object": ' + b"[" * depth + b"]" * depth + b"}")
    if how == 10:
        return draw(st.binary(max_size=30))
    line = json.dumps({"type": "ADDED", "object": pod("a", rv="11")}).encode()
    cut = draw(st.integers(0, len(line)))
    return line[:cut] + draw(st.binary(max_size=4)) + line[cut + 1:]


@st.composite
def pages(draw: Any) -> bytes:
    if draw(st.integers(0, 5)) == 0:
        return json.dumps(draw(json_values)).encode()
    md = draw(st.fixed_dictionaries({}, optional={"resourceVersion": rvs, "continue": st.one_of(
        st.sampled_from(["", "tok"]), json_values)}))
    body: dict[str, Any] = {"metadata": draw(st.one_of(st.just(md), json_values))}
    body["items"] = draw(st.one_of(st.lists(objects(), max_size=4), json_values))
    return json.dumps(body).encode()


@given(st.sampled_from(RESOURCES), st.lists(events(), min_size=1, max_size=8))
@fuzzing.unit_budget(UNIT_EXAMPLES)
def test_watch_lines_never_leave_a_half_decoded_object(resource: Resource, lines: list[bytes]) -> None:
    feed_lines(resource, lines)


@given(st.sampled_from(RESOURCES), pages())
@fuzzing.unit_budget(UNIT_EXAMPLES)
def test_list_pages_decode_whole_or_not_at_all(resource: Resource, raw: bytes) -> None:
    feed_page(resource, raw)


@pytest.mark.fuzz
@given(st.sampled_from(RESOURCES), st.lists(events(), min_size=1, max_size=16))
@fuzzing.fuzz_budget(LONG_EXAMPLES)
def test_fuzz_watch_lines_long(resource: Resource, lines: list[bytes]) -> None:
    feed_lines(resource, lines)


@pytest.mark.fuzz
@given(st.sampled_from(RESOURCES), pages())
@fuzzing.fuzz_budget(LONG_EXAMPLES)
def test_fuzz_list_pages_long(resource: Resource, raw: bytes) -> None:
    feed_page(resource, raw)


# --- a long local run: random mutations of valid events, no shrinking --------------------------------

JUNK: list[Any] = [None, True, 0, -1, 2**70, 1.5, "", "x", [], {}, [1], {"a": 1}, "9" * 50]


def mutate(rng: random.Random, value: Any, depth: int = 0) -> Any:
    if rng.random() < 0.12 or depth > 5:
        return rng.choice(JUNK)
    if isinstance(value, dict):
        out = {k: mutate(rng, v, depth + 1) if rng.random() < 0.4 else v for k, v in value.items()
               if rng.random() > 0.05}
        return out
    if isinstance(value, list):
        return [mutate(rng, v, depth + 1) for v in value]
    return value


def _long_cases(rng: random.Random) -> Iterator[tuple[Resource, list[bytes], bytes]]:
    """(the resource, watch lines, a list page): valid events and a valid page, mutated."""
    valid = [{"type": t, "object": pod(n, rv=str(rng.randint(11, 99)))} for t in ("ADDED", "MODIFIED", "DELETED")
             for n in "abc"] + [{"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "50"}}},
                                {"type": "ERROR", "object": {"kind": "Status", "code": 410}}]
    while True:
        lines = [json.dumps(mutate(rng, rng.choice(valid))).encode() for _ in range(rng.randint(1, 8))]
        page = json.dumps(mutate(rng, {"metadata": {"resourceVersion": "10", "continue": "t"},
                                       "items": [pod("a"), pod("b")]})).encode()
        yield rng.choice(RESOURCES), lines, page


def _check_case(case: tuple[Resource, list[bytes], bytes]) -> None:
    resource, lines, page = case
    feed_lines(resource, lines)
    feed_page(resource, page)


def long_run(cases: int, seed: int) -> int:
    return fuzzing.long_run(cases, seed, _long_cases, _check_case, max_crashes=5)


if __name__ == "__main__":
    sys.exit(fuzzing.main(long_run, cases=20000, seed=None))
