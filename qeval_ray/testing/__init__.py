"""Helpers for tests, the demo and benchmarks: tiny models, synthetic corpora, fault injection."""
