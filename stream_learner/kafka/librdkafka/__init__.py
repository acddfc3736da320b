"""The librdkafka transport (confluent-kafka): ``KAFKA_CLIENT=librdkafka``.

config (settings to librdkafka properties) → reader (consume in a thread, columns) → writer (produce,
delivery reports) → rebalance (callbacks bridged to the event loop) → connection (start, probe, stop).
"""
