"""What a reflector lists and watches: one collection, optionally narrowed by selectors.

Pure data and pure functions (no `kubernetes` import): tables of `Resource`s are read by code that
never talks to a cluster, such as RBAC generation for the deploy manifests.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

Obj = dict[str, Any]
OMITTED = "omittedData"
OMITTED_NAMES = 16          # names of keys not kept, recorded at most (a key name is at most 253 bytes)


@dataclass(frozen=True)
class Resource:
    """One collection: `/api/v1/<plural>` for the core group, `/apis/<group>/<version>/<plural>` else.

    `versions` is a preference order: the first one the server serves is used (a CRD group may serve
    only some of them). Selectors are sent to the API server and applied again to what comes back, so
    the cache stays scoped even if a server or proxy ignored them.
    """

    group: str                      # "" is the core group
    versions: tuple[str, ...]
    plural: str
    kind: str
    namespaced: bool
    field_selector: str = ""        # e.g. "spec.nodeName=node-1" (equality terms, comma = and)
    label_selector: str = ""        # e.g. "app=web,tier!=db,env in (a,b),!legacy"
    # When set, each object is cut down to its name and these keys of its `data` as soon as it is
    # read (`project`): for a kind watched cluster-wide for a few keys (ConfigMaps, for `ca.crt`),
    # whose other content (up to 1 MiB each, and kubectl's last-applied copy of it) must not be kept.
    data_keys: tuple[str, ...] | None = None
    # With `data_keys`: keys kept too, each only while its value is at most `key_bound` bytes
    # (ConfigMaps, for a Gateway's parameter overlays). A larger one is dropped and its size kept,
    # and so are the names of up to `OMITTED_NAMES` keys not kept at all, under `omittedData`
    # ({"oversize": {key: bytes}, "others": [key], "othersTotal": n}): a reader can then say
    # what it was not given instead of reading as absent what was too large or misnamed.
    bounded_keys: tuple[str, ...] = ()
    key_bound: int = 0
    # With `data_keys`: labels kept (their value only), and with any of them the creationTimestamp
    # (ConfigMaps, for the label that makes one a Gateway class's defaults, and the age that picks
    # one of several): every other label and annotation goes.
    kept_labels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.versions:
            raise ValueError(f"resource {self.name}: versions: must name at least one version")
        parse_label_selector(self.label_selector, what=f"resource {self.name}: label_selector")
        parse_field_selector(self.field_selector, what=f"resource {self.name}: field_selector")

    @property
    def name(self) -> str:
        """kubectl's name for the collection: `pods`, `virtualservices.networking.istio.io`."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def api_version(self, version: str) -> str:
        return f"{self.group}/{version}" if self.group else version

    def matches(self, obj: Obj) -> bool:
        """Does `obj` satisfy both selectors?"""
        return field_selector_matches(obj, self.field_selector) and label_selector_matches(
            (obj.get("metadata") or {}).get("labels") or {}, self.label_selector)

    def project(self, obj: Obj) -> Obj:
        """`obj` as it is kept: whole, or (`data_keys`) its kind, type, name and those keys of `data`.
        The resourceVersion goes too, so that a change elsewhere in the object (a leader-election
        ConfigMap renewed every few seconds) leaves what is kept equal and wakes no consumer."""
        if self.data_keys is None:
            return obj
        md = obj.get("metadata") or {}
        data = obj.get("data") or {}
        binary = obj.get("binaryData") or {}
        if not isinstance(data, dict) or not isinstance(binary, dict):
            # the server's JSON: a string here was indexed (TypeError) or read as its characters
            raise ValueError(f"{self.name} {md.get('name')!r}: data or binaryData is no object")
        out: Obj = {k: obj[k] for k in ("apiVersion", "kind", "type") if k in obj}   # (a Secret's type)
        out["metadata"] = {k: md[k] for k in ("name", "namespace") if k in md}
        labels = {k: v for k, v in (md.get("labels") or {}).items() if k in self.kept_labels}
        if labels:
            out["metadata"]["labels"] = labels
            if "creationTimestamp" in md:
                out["metadata"]["creationTimestamp"] = md["creationTimestamp"]
        out["data"] = {k: data[k] for k in self.data_keys if k in data}
        oversize = {}
        for k in self.bounded_keys:
            if k in data:
                size = len(str(data[k]).encode())
                if size <= self.key_bound:
                    out["data"][k] = data[k]
                else:
                    oversize[k] = size
        others = sorted({*data, *binary} - set(self.data_keys) - set(self.bounded_keys))
        omitted: Obj = {}
        if oversize:
            omitted["oversize"] = oversize
        if others:
            omitted["others"], omitted["othersTotal"] = others[:OMITTED_NAMES], len(others)
        if omitted:
            out[OMITTED] = omitted
        return out


# -- field selectors: equality terms on dotted paths -------------------------------------------------

def parse_field_selector(selector: str, what: str = "field selector") -> list[tuple[str, str, str]]:
    """`a.b=x,c!=y` -> [(path, op, value)]; op is "=" or "!=" (`==` is read as `=`)."""
    terms = []
    for term in filter(None, (t.strip() for t in selector.split(","))):
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)\s*(==|!=|=)\s*(.*)", term)
        if not m:
            raise ValueError(f"{what}: {term!r} is not `path=value` or `path!=value`")
        path, op, value = m.groups()
        terms.append((path, "!=" if op == "!=" else "=", value))
    return terms


def field_selector_matches(obj: Obj, selector: str) -> bool:
    """Does `obj` match a field selector like `spec.nodeName=n1,metadata.name!=x`? A missing field
    reads as the empty string, as on the API server."""
    for path, op, want in parse_field_selector(selector):
        cur: Any = obj
        for part in path.split("."):
            cur = cur.get(part) if isinstance(cur, dict) else None
        if (str(cur if cur is not None else "") == want) != (op == "="):
            return False
    return True


# -- label selectors: equality, set and existence terms ----------------------------------------------

_SET_TERM = re.compile(r"([^\s!=(),]+)\s+(in|notin)\s*\(([^)]*)\)")
_EQ_TERM = re.compile(r"([^\s!=(),]+)\s*(==|!=|=)\s*([^\s!=(),]*)")
_EXISTS_TERM = re.compile(r"(!?)\s*([^\s!=(),]+)")


def _split_terms(selector: str) -> list[str]:
    """Split on the commas that are not inside `in (...)` parentheses."""
    terms, depth, cur = [], 0, ""
    for ch in selector:
        depth += (ch == "(") - (ch == ")")
        if ch == "," and depth == 0:
            terms.append(cur.strip())
            cur = ""
        else:
            cur += ch
    terms.append(cur.strip())
    return [t for t in terms if t]


def parse_label_selector(selector: str, what: str = "label selector") -> list[tuple[str, str, frozenset[str]]]:
    """`app=web,env in (a,b),!legacy` -> [(key, op, values)]; op in =, !=, in, notin, exists, !exists."""
    out = []
    for term in _split_terms(selector):
        if m := _SET_TERM.fullmatch(term):
            out.append((m[1], m[2], frozenset(v.strip() for v in m[3].split(",") if v.strip())))
        elif m := _EQ_TERM.fullmatch(term):
            out.append((m[1], "!=" if m[2] == "!=" else "=", frozenset({m[3]})))
        elif m := _EXISTS_TERM.fullmatch(term):
            out.append((m[2], "!exists" if m[1] else "exists", frozenset()))
        else:
            raise ValueError(f"{what}: {term!r} is not a label selector term (k=v, k!=v, k in (..), k notin (..), k, !k)")
    return out


def label_selector_matches(labels: dict[str, str], selector: str) -> bool:
    for key, op, values in parse_label_selector(selector):
        has, value = key in labels, labels.get(key)
        ok = {"=": has and value in values, "!=": not has or value not in values,
              "in": has and value in values, "notin": not has or value not in values,
              "exists": has, "!exists": not has}[op]
        if not ok:
            return False
    return True
