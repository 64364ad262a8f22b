"""ambitctl."""
