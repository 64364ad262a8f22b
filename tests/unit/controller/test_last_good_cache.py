"""The last-good cache (controller/sources/cache.py): how a relist is applied."""

from __future__ import annotations

import threading
from typing import Any

from controller.sources.cache import LastGoodCache
from controller.validation import FieldError


def policy(name: str, action: str) -> dict[str, Any]:
    return {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": name, "namespace": "demo"}, "spec": {"action": action, "rules": [{}]}}


def test_a_relist_is_applied_whole() -> None:
    """While the watch was down an ALLOW policy was replaced by a DENY one. The relist dropped the
    ALLOW policy, then validated and added the others one by one: a snapshot taken in between held
    neither, and no ALLOW policy left admits everything."""
    validating = threading.Event()
    go_on = threading.Event()

    def slow_validate(obj: dict[str, Any]) -> list[FieldError]:
        if obj["metadata"]["name"] == "deny-x":
            validating.set()
            go_on.wait(10)
        return []

    cache = LastGoodCache(validate=slow_validate)
    cache.upsert(policy("allow-x", "ALLOW"))
    relist = threading.Thread(target=cache.replace, args=([policy("deny-x", "DENY")], lambda _k: True))
    relist.start()
    try:
        assert validating.wait(10)
        seen = [o["metadata"]["name"] for o in cache.objects()]     # what the publisher would snapshot now
    finally:
        go_on.set()
        relist.join(10)
    assert seen == ["allow-x"], "mid-relist, the cache still holds the state before it"
    assert [o["metadata"]["name"] for o in cache.objects()] == ["deny-x"]
