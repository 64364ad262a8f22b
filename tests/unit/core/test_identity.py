"""SPIFFE id parsing: the one parser every trust decision goes through."""

from __future__ import annotations

import pytest

from ambit import identity as ident
from ambit.model import spiffe_id


def test_round_trip_and_principal_form() -> None:
    s = ident.parse("spiffe://cluster.local/ns/demo/sa/client")
    assert (s.trust_domain, s.namespace, s.service_account) == ("cluster.local", "demo", "client")
    assert str(s) == s.uri == spiffe_id("cluster.local", "demo", "client")
    assert s.principal == "cluster.local/ns/demo/sa/client"
    assert ident.parse(s.principal, allow_schemeless=True) == s


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("cluster.local/ns/demo/sa/client", "must start with 'spiffe://'"),
        ("https://cluster.local/ns/demo/sa/client", "must start with 'spiffe://'"),
        ("spiffe://cluster.local/ns/demo", "path must be"),
        ("spiffe://cluster.local/ns/demo/sa/client/extra", "path must be"),
        ("spiffe://cluster.local/namespace/demo/sa/client", "path must be"),
        ("spiffe:///ns/demo/sa/client", "bad trust domain"),
        ("spiffe://Cluster.Local/ns/demo/sa/client", "bad trust domain"),
        ("spiffe://cluster.local/ns/Demo/sa/client", "bad namespace"),
        ("spiffe://cluster.local/ns/demo/sa/", "bad service account"),
        ("spiffe://cluster.local/ns/demo/sa/cli%65nt", "bad service account"),
        ("spiffe://cluster.local/ns/" + "a" * 64 + "/sa/x", "bad namespace"),
    ],
)
def test_malformed_ids_are_refused_with_the_reason(value: str, reason: str) -> None:
    with pytest.raises(ident.InvalidSpiffeId) as ei:
        ident.parse(value)
    assert reason in str(ei.value) and value in str(ei.value)


def test_to_principal_strips_only_the_scheme() -> None:
    assert ident.to_principal("spiffe://td/ns/a/sa/b") == "td/ns/a/sa/b"
    assert ident.to_principal("td/ns/a/sa/*") == "td/ns/a/sa/*"


def test_peercert_uris_reads_only_uri_sans_from_ssls_decoded_certificate():
    cert = {"subject": ((("commonName", "x"),),),
            "subjectAltName": (("DNS", "a.example"), ("URI", "spiffe://td/ns/a/sa/b"), ("URI", "urn:x"))}
    assert ident.peercert_uris(cert) == ["spiffe://td/ns/a/sa/b", "urn:x"]
    assert ident.peercert_uris({"subject": ()}) == [] and ident.peercert_uris(None) == []


@pytest.mark.parametrize(("value", "reason"), [
    ("spiffe://cluster.local/ns/demo/sa/client\n", "bad service account 'client\\n'"),
    ("spiffe://cluster.local/ns/demo\n/sa/client", "bad namespace 'demo\\n'"),
    ("spiffe://cluster.local\n/ns/demo/sa/client", "bad trust domain 'cluster.local\\n'"),
])
def test_a_trailing_newline_is_no_part_of_a_valid_id(value: str, reason: str) -> None:
    """`$` matches before a final newline: each part is matched whole."""
    with pytest.raises(ident.InvalidSpiffeId) as ei:
        ident.parse(value)
    assert reason in str(ei.value)
