"""What one fetch brought, decoded: events and labels as arrays, and the records rejected on the way."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from aiokafka import TopicPartition

from stream_learner.config import Settings
from stream_learner.intake.events import decode_events
from stream_learner.intake.labels import decode_labels
from stream_learner.records import EventBatch, LabelBatch, ReadRecords, RecordColumns, Rejected


@dataclass
class Decoded:
    """One fetch, decoded; ``rejected`` keeps the order the records were read in, events first."""

    events: EventBatch | None = None
    labels: LabelBatch | None = None
    rejected: list[Rejected] = field(default_factory=list)
    events_read: int = 0
    """Event records read, bad ones included."""
    labels_read: int = 0
    """Label records read, bad ones included."""


def decode_fetched(fetched: Mapping[TopicPartition, ReadRecords], settings: Settings) -> Decoded:
    """Decode ``fetched`` (records per partition of the events and labels topics), one call per topic:
    a turn of a live stream holds a few records of each partition, and a decoder's cost per call
    outweighs its cost per record."""
    s, decoded = settings, Decoded()
    events = RecordColumns([records for tp, records in fetched.items() if tp.topic == s.events_topic])
    labels = RecordColumns([records for tp, records in fetched.items() if tp.topic != s.events_topic])
    if len(events):
        decoded.events, rejected = decode_events(events, s.input_dim, time.time())
        decoded.rejected += rejected
        decoded.events_read = len(events)
    if len(labels):
        decoded.labels, rejected = decode_labels(labels, s.task, s.num_classes)
        decoded.rejected += rejected
        decoded.labels_read = len(labels)
    return decoded
