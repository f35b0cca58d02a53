"""Embedded servers and process helpers for the demo, the tests and the benchmarks (not shipped in images)."""
