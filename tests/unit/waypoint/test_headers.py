"""Header rules between the legs (waypoint/http/headers.py): hop-by-hop removal (RFC 9110 §7.6.1,
RFC 9113 §8.2.2), x-request-id and traceparent as Envoy/Istio users expect."""

from __future__ import annotations

import random
import uuid

from waypoint.http.headers import (
    HOP_BY_HOP,
    add_forwarded,
    grpc_status_for,
    is_grpc,
    request_id,
    strip_hop_by_hop,
)


def test_hop_by_hop_and_connection_named_headers_are_removed() -> None:
    h = [("connection", "keep-alive, x-secret"), ("keep-alive", "timeout=5"), ("x-secret", "1"),
         ("transfer-encoding", "chunked"), ("proxy-connection", "x"), ("proxy-authorization", "Basic x"),
         ("upgrade", "websocket"), ("te", "gzip"), ("x-kept", "yes"), ("cookie", "a=1")]
    assert strip_hop_by_hop(h) == [("x-kept", "yes"), ("cookie", "a=1")]


def test_te_trailers_survives_for_grpc() -> None:
    assert strip_hop_by_hop([("te", "trailers")]) == [("te", "trailers")]


def test_upgrade_kept_for_a_passed_through_upgrade() -> None:
    h = [("connection", "Upgrade"), ("upgrade", "websocket"), ("sec-websocket-key", "k")]
    assert strip_hop_by_hop(h, keep_upgrade=True) == [("upgrade", "websocket"), ("sec-websocket-key", "k"),
                                                       ("connection", "upgrade")]


def test_request_id_generated_when_absent_and_kept_when_present() -> None:
    out, rid = add_forwarded([("host", "a")], "http", random.Random(1))
    assert ("x-request-id", rid) in out and len(rid) == 36 and rid[14] == "4"
    out2, rid2 = add_forwarded([("x-request-id", "abc")], "http", random.Random(1))
    assert rid2 == "abc" and [v for k, v in out2 if k == "x-request-id"] == ["abc"]


def test_request_id_is_the_uuid4_of_the_random_bits() -> None:
    for seed in range(200):
        bits = random.Random(seed).getrandbits(128)
        assert request_id(random.Random(seed)) == str(uuid.UUID(int=bits, version=4))


def test_connection_named_headers_dropped_only_when_named() -> None:
    h = [("connection", "x-secret, close"), ("x-secret", "1"), ("x-kept", "2"), ("keep-alive", "5")]
    assert strip_hop_by_hop(h) == [("x-kept", "2")]
    assert strip_hop_by_hop([("x-secret", "1"), ("te", "trailers")]) == [("x-secret", "1"), ("te", "trailers")]


def test_trace_context_propagated_untouched_and_never_made_up() -> None:
    tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    b3 = [("x-b3-traceid", "463ac35c9f6413ad"), ("x-b3-spanid", "a2fb4a1d1a96d312"), ("x-b3-sampled", "1")]
    out, _ = add_forwarded([("traceparent", tp)] + b3, "http", random.Random(2))
    assert [v for k, v in out if k == "traceparent"] == [tp]
    assert all(h in out for h in b3)
    out, _ = add_forwarded([], "http", random.Random(2))
    assert "traceparent" not in dict(out)       # only a configured tracer adds one (tracing_sdk)


def test_forwarded_proto_set_when_absent_only() -> None:
    assert dict(add_forwarded([], "http", random.Random(0))[0])["x-forwarded-proto"] == "http"
    out, _ = add_forwarded([("x-forwarded-proto", "https")], "http", random.Random(0))
    assert [v for k, v in out if k == "x-forwarded-proto"] == ["https"]


def test_grpc_detection_and_status_mapping() -> None:
    assert is_grpc([("content-type", "application/grpc+proto")])
    assert not is_grpc([("content-type", "application/json")])
    assert is_grpc([("content-type", "application/grpc")]) and is_grpc([("content-type", "Application/GRPC+json")])
    # gRPC-Web and look-alikes are not gRPC (Envoy's Grpc::Common::hasGrpcContentType)
    for ct in ("application/grpc-web", "application/grpc-web+proto", "application/grpc-web-text", "application/grpcx"):
        assert not is_grpc([("content-type", ct)]), ct
    # gRPC's http-grpc-status-mapping: 503 -> UNAVAILABLE, 403 -> PERMISSION_DENIED, 404 -> UNIMPLEMENTED
    assert (grpc_status_for(503), grpc_status_for(403), grpc_status_for(404), grpc_status_for(500)) == (14, 7, 12, 2)


def test_a_lone_connection_option_is_dropped_and_anything_it_names_goes_the_general_way() -> None:
    h = [("server", "x"), ("connection", "Keep-Alive"), ("content-length", "3")]
    assert strip_hop_by_hop(h) == [("server", "x"), ("content-length", "3")]
    h = [("connection", "keep-alive, x-secret"), ("x-secret", "1"), ("x-kept", "2")]
    assert strip_hop_by_hop(h) == [("x-kept", "2")]
    h = [("connection", "x-secret"), ("x-secret", "1")]
    assert strip_hop_by_hop(h) == []
    h = [("a", "1"), ("b", "2")]
    out = strip_hop_by_hop(h)
    assert out == h and out is not h        # a copy: callers may extend it


def test_add_forwarded_keeps_what_the_client_sent_and_adds_the_rest_in_order() -> None:
    sent = [("x-request-id", "first"), ("traceparent", "00-1-2-00"), ("x-request-id", "second"),
            ("x-forwarded-proto", "https")]
    out, rid = add_forwarded(sent, "http", random.Random(1))
    assert out == sent and rid == "first"
    out, rid = add_forwarded([("host", "a"), ("traceparent", "00-1-2-00")], "http", random.Random(1))
    assert [k for k, _ in out] == ["host", "traceparent", "x-forwarded-proto", "x-request-id"]
    assert rid == request_id(random.Random(1)) and ("x-forwarded-proto", "http") in out
    out, _ = add_forwarded([], "https", random.Random(1))
    assert [k for k, _ in out] == ["x-forwarded-proto", "x-request-id"]


def _strip_reference(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """RFC 9110 §7.6.1 as the general path reads it: no hop-by-hop header (TE: trailers kept),
    nothing the Connection headers name."""
    named = {t.strip().lower() for k, v in headers if k == "connection" for t in v.split(",") if t.strip()}
    named -= {"upgrade", "close", "keep-alive"}
    out = []
    for k, v in headers:
        if k in named or (k in HOP_BY_HOP and not (k == "te" and v.strip().lower() == "trailers")):
            continue
        out.append((k, "trailers") if k == "te" else (k, v))
    return out


def test_strip_hop_by_hop_fast_paths_agree_with_the_rule_on_random_messages() -> None:
    names = ["connection", "keep-alive", "te", "x-a", "content-length", "upgrade", "server", "date"]
    values = ["keep-alive", "close", " Keep-Alive ", "x-a", "x-a, close", "trailers", "5", "v"]
    r = random.Random(11)
    for _ in range(4000):
        headers = [(r.choice(names), r.choice(values)) for _ in range(r.randrange(0, 6))]
        assert strip_hop_by_hop(headers) == _strip_reference(headers), headers
