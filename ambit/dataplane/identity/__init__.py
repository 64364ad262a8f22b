"""ambit/dataplane/identity."""
