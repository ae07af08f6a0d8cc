"""Helpers for the demo, the benchmarks and the tests: a private mosquitto, clips."""
