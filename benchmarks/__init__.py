"""Benchmarks for stream_learner: catch-up throughput, latency, training, join memory.

Run ``python -m benchmarks.run`` (or ``--quick``); see ``docs/benchmarks.md``.
"""
