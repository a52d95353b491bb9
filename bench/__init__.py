"""Benchmarks: each runs a measurement beside its baseline and writes JSON (docs/bench/)."""
