"""Observability: the run loop's telemetry hooks, Prometheus metrics, the health endpoints, TensorBoard and logs."""
