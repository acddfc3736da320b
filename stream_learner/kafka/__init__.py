"""Kafka: the clients, reading (fetching, positions, lag, rebalances) and writing (predictions, dead
letters), behind the small Protocols of :mod:`stream_learner.kafka.protocol`."""
