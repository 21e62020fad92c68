"""Scheduling benchmarks: workloads, metrics, measured latency tables, simulated runs."""
