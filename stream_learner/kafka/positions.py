"""The consumer's own position on a partition, read without waiting for it."""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, TopicPartition


def known_position(consumer: AIOKafkaConsumer, tp: TopicPartition) -> int | None:
    """The consumer's position on ``tp`` if it already has one, without waiting (None otherwise).

    ``AIOKafkaConsumer.position`` waits until the fetcher has resolved the position,
    which can stall the run loop; this reads the same state without waiting.
    """
    try:
        # private API: position() waits for the fetcher; this reads the same state at once.
        assignment = consumer._subscription.subscription.assignment
        state = assignment.state_value(tp)
        return int(state.position) if state is not None and state.has_valid_position else None
    except AttributeError:
        return None
