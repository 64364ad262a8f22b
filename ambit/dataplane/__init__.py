"""ambit/dataplane."""
