"""kubectl label selectors (`-l`): `app=echo`, `app==echo`, `tier!=db`, `env in (a,b)`,
`env notin (a,b)`, `app` (has the key), `!app` (lacks it); comma-separated requirements are ANDed.

    sel = parse("app=echo,version in (v1,v2)")
    sel(labels) -> bool
"""

from __future__ import annotations

import re
from collections.abc import Callable

from controller.kinds.common import label_key_reason, label_value_reason


class SelectorError(ValueError):
    pass


Requirement = Callable[[dict[str, str]], bool]
_SET = re.compile(r"^\s*(?P<key>[^\s!=(),]+)\s+(?P<op>in|notin)\s*\((?P<values>[^)]*)\)\s*$")
_CMP = re.compile(r"^\s*(?P<key>[^\s!=(),]+)\s*(?P<op>==|=|!=)\s*(?P<value>[^\s,()=!]*)\s*$")
_EXISTS = re.compile(r"^\s*(?P<neg>!?)\s*(?P<key>[^\s!=(),]+)\s*$")


def _split(text: str) -> list[str]:
    """Split on commas outside parentheses."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise SelectorError(f'unbalanced ")" in selector "{text}"')
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if depth:
        raise SelectorError(f'unbalanced "(" in selector "{text}"')
    parts.append(cur)
    return parts


def _key(key: str, text: str) -> str:
    reason = label_key_reason(key)
    if reason:
        raise SelectorError(f'selector "{text}": {reason}')
    return key


def _value(value: str, text: str) -> str:
    reason = label_value_reason(value)
    if reason:
        raise SelectorError(f'selector "{text}": {reason}')
    return value


def _requirement(part: str, text: str) -> Requirement:
    m = _SET.match(part)
    if m:
        key = _key(m["key"], text)
        values = {_value(v.strip(), text) for v in m["values"].split(",") if v.strip()}
        if not values:
            raise SelectorError(f'selector "{text}": "{m["op"]}" needs at least one value')
        if m["op"] == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    m = _CMP.match(part)
    if m:
        key, value = _key(m["key"], text), _value(m["value"], text)
        if m["op"] == "!=":
            return lambda labels: labels.get(key) != value
        return lambda labels: key in labels and labels[key] == value
    m = _EXISTS.match(part)
    if m:
        key = _key(m["key"], text)
        if m["neg"]:
            return lambda labels: key not in labels
        return lambda labels: key in labels
    raise SelectorError(f'cannot parse selector requirement "{part.strip()}" in "{text}" '
                        '(use key=value, key!=value, "key in (a,b)", "key notin (a,b)", key or !key)')


def parse(text: str) -> Callable[[dict[str, str]], bool]:
    """A predicate over a label map; raises SelectorError naming the bad part."""
    if not text.strip():
        return lambda labels: True
    reqs = [_requirement(p, text) for p in _split(text) if p.strip() or _fail(text)]
    return lambda labels: all(r(labels) for r in reqs)


def _fail(text: str) -> bool:
    raise SelectorError(f'empty requirement in selector "{text}"')
