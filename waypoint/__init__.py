"""The waypoint: Ambit's L7 proxy (HTTP/1.1, HTTP/2, gRPC). Not built yet.

It will be built on ambit/dataplane (HBONE, identities, telemetry) and import neither ztunnel/ nor
controller/; tests/unit/test_layers.py enforces that.
"""
