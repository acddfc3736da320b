"""Dead letters: a rejected record goes to the dead-letter topic as it was read, with why and from where.

The headers below are the contract with whoever reads the dead-letter topic (docs/contract.md).
"""

from __future__ import annotations

from collections import Counter

import structlog

from stream_learner.observability.telemetry import Telemetry
from stream_learner.records import Rejected

log = structlog.get_logger(__name__)

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


def account_dead_letter(item: Rejected, totals: Counter[str], telemetry: Telemetry) -> None:
    """Log and count a record on its way to the dead-letter topic (either client's writer)."""
    r = item.record
    log.warning("record_dead_lettered", where=r.where, reason=item.reason, detail=item.detail)
    totals[f"dead_lettered.{item.reason}"] += 1
    totals["dead_lettered"] += 1
    telemetry.dead_lettered(item.reason)
