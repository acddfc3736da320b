"""Dead letters: a rejected record goes to the dead-letter topic as it was read, with why and from where.

The headers below are the contract with whoever reads the dead-letter topic (docs/contract.md).
"""

from __future__ import annotations

from stream_learner.records import Rejected

DLQ_REASON = "dlq.reason"
DLQ_DETAIL = "dlq.detail"
DLQ_TOPIC = "dlq.source.topic"
DLQ_PARTITION = "dlq.source.partition"
DLQ_OFFSET = "dlq.source.offset"
MAX_DETAIL_BYTES = 1000


def dead_letter_headers(rejected: Rejected) -> list[tuple[str, bytes]]:
    """The record's own headers, then the reason and the record's source position."""
    r = rejected.record
    return [
        *r.headers,
        (DLQ_REASON, rejected.reason.encode()),
        (DLQ_DETAIL, rejected.detail.encode()[:MAX_DETAIL_BYTES]),
        (DLQ_TOPIC, r.topic.encode()),
        (DLQ_PARTITION, str(r.partition).encode()),
        (DLQ_OFFSET, str(r.offset).encode()),
    ]
