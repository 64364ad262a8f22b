"""Route resilience vocabulary that the controller validates and the waypoint applies: VirtualService
`retries.retryOn` conditions and `fault.abort.grpcStatus` names.

It lives in the core so both components read one list (they never import each other): what
`ambit apply` accepts is exactly what Istio accepts, and what of it the waypoint does not apply is
named here with the reason `ambit apply` prints.
"""

from __future__ import annotations

from http import HTTPStatus

# Istio's `supportedRetryOnPolicies` (istio/istio pkg/config/validation/validation.go): Envoy's
# x-envoy-retry-on and x-envoy-retry-grpc-on values. Istio's validateHTTPRetry refuses any other
# value that is not an HTTP status code: "%q is not a valid retryOn policy".
RETRY_ON_HTTP = frozenset({
    "5xx", "gateway-error", "reset", "reset-before-request", "connect-failure", "retriable-4xx",
    "refused-stream", "retriable-status-codes", "retriable-headers", "envoy-ratelimited",
    "http3-post-connect-failure",
})
RETRY_ON_GRPC = {"cancelled": "1", "deadline-exceeded": "4", "internal": "13", "resource-exhausted": "8",
                 "unavailable": "14"}     # condition -> the grpc-status it retries
RETRY_ON = RETRY_ON_HTTP | frozenset(RETRY_ON_GRPC)

# Valid for Istio, not applied by the waypoint: `ambit apply` warns with these reasons.
RETRY_ON_NOT_APPLIED = {
    "retriable-headers": "a VirtualService cannot list the retriable response headers (Istio sets none either) "
                         "and the waypoint does not read x-envoy-retriable-header-names",
    "http3-post-connect-failure": "the waypoint reaches endpoints over HBONE, never over HTTP/3, so there is no "
                                  "such failure to retry",
}
RETRY_ON_APPLIED = RETRY_ON - frozenset(RETRY_ON_NOT_APPLIED)


def retry_on_parts(retry_on: str) -> list[str]:
    """The conditions of a `retryOn` string: comma-separated, blanks around them dropped (Istio's
    retry.go trims them when it translates)."""
    return [p.strip() for p in retry_on.split(",") if p.strip()]


def is_status_code(part: str) -> bool:
    """An HTTP status code, as Istio tells one (`http.StatusText(i) != ""`): a retriable status."""
    if not (part.isascii() and part.isdigit()):        # (isdigit alone takes "²": int() raises)
        return False
    try:
        HTTPStatus(int(part))
    except ValueError:
        return False
    return True


def invalid_retry_on(retry_on: str) -> str | None:
    """Why a `retryOn` is refused (Istio's validateHTTPRetry), or None."""
    bad = [p for p in retry_on_parts(retry_on) if p not in RETRY_ON and not is_status_code(p)]
    if not bad:
        return None
    return "; ".join(f'"{p}" is not a valid retryOn policy' for p in bad) + (
        f" (valid: an HTTP status code, or one of {', '.join(sorted(RETRY_ON))})")


# grpc/grpc doc/statuscodes.md: the names Istio accepts for `grpcStatus`
# (istio/istio pkg/util/grpc `SupportedGRPCStatus`).
GRPC_CODES = {
    "OK": 0, "CANCELLED": 1, "UNKNOWN": 2, "INVALID_ARGUMENT": 3, "DEADLINE_EXCEEDED": 4, "NOT_FOUND": 5,
    "ALREADY_EXISTS": 6, "PERMISSION_DENIED": 7, "RESOURCE_EXHAUSTED": 8, "FAILED_PRECONDITION": 9,
    "ABORTED": 10, "OUT_OF_RANGE": 11, "UNIMPLEMENTED": 12, "INTERNAL": 13, "UNAVAILABLE": 14,
    "DATA_LOSS": 15, "UNAUTHENTICATED": 16,
}


def grpc_code(name: str) -> int | None:
    """A gRPC status name ("UNAVAILABLE", in any case) or number ("14") as its code; None if unknown."""
    n = name.strip().upper()
    if n in GRPC_CODES:
        return GRPC_CODES[n]
    if n.isascii() and n.isdigit() and int(n) <= 16:      # (isdigit alone takes "²": int() raises)
        return int(n)
    return None


def invalid_grpc_status(name: str) -> str | None:
    """Why a `fault.abort.grpcStatus` is refused (Istio's validateGRPCStatus), or None."""
    if grpc_code(name) is not None:
        return None
    return (f'gRPC status "{name}" is not supported. See https://github.com/grpc/grpc/blob/master/doc/statuscodes.md '
            "for a list of supported codes, for example 'NOT_FOUND'")
