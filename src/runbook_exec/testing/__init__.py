"""Helpers for the test suite, the demo and the benchmarks (a lab of real local SSH hosts).
The product never imports this package: a test says so (tests/test_structure.py)."""
