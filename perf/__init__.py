"""Measurement tooling: the benchmark against peers' dispatch patterns (`bench.py` is its front
door) and the fault matrix (`python -m perf.fault_matrix`).

perf may import engine, backends, benchmarks and gpo; nothing imports perf but `bench.py` and the
tests.
"""
