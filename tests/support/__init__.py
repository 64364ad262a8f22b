"""Test support code shared across test suites (emulators, fixtures)."""
