"""How model resources travel on the config stream: canonical JSON bodies and content-hash versions.

The version of a resource is a hash of its canonical body, so it is stable across controller
restarts and identical for every subscriber: a reconnecting client can name what it already holds
and the server can tell, without any per-client history, whether it must resend it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from ambit.model import RESOURCE_TYPES, Resource, wire_dict


@dataclass(frozen=True)
class Encoded:
    """A resource as it travels: its name, content version and JSON body."""

    name: str
    version: str
    body: bytes


def canonical_body(resource: Resource) -> bytes:
    """Canonical JSON (sorted keys, no whitespace) so equal content always hashes equally; set
    advisory fields are named in it (ambit.model.ADVISORY_KEY)."""
    return json.dumps(wire_dict(resource), sort_keys=True, separators=(",", ":")).encode()


def content_version(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()[:16]


def encode(resource: Resource) -> Encoded:
    body = canonical_body(resource)
    return Encoded(resource.resource_name, content_version(body), body)


class DecodeError(ValueError):
    """A resource body the client cannot turn into a model object; the message names it."""


def resource_class(type_url: str) -> type[Resource]:
    try:
        return RESOURCE_TYPES[type_url]
    except KeyError:
        known = ", ".join(sorted(RESOURCE_TYPES))
        raise ValueError(f"type_url {type_url!r}: unknown resource type (known: {known})") from None


def decode(type_url: str, name: str, body: bytes) -> Resource:
    """Parse one body; raise DecodeError naming the type, the resource and the reason."""
    cls = resource_class(type_url)
    try:
        data = json.loads(body)
    except ValueError as e:
        raise DecodeError(f"{type_url} {name!r}: body is not JSON: {e}") from None
    if not isinstance(data, dict):
        raise DecodeError(f"{type_url} {name!r}: body must be a JSON object, got {type(data).__name__}")
    try:
        res = cls.from_dict(data)
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        raise DecodeError(f"{type_url} {name!r}: body does not fit {cls.__name__}: {e}") from None
    if res.resource_name != name:
        raise DecodeError(
            f"{type_url} {name!r}: resource_name of the body is {res.resource_name!r}, not the name it was sent under"
        )
    return res
