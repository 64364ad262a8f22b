"""ambit/dataplane/telemetry."""
