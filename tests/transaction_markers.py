"""What a read_committed consumer must see of a topic, worked out from the log's own transaction markers.

A transaction's records are stored as they are produced; the broker ends the transaction by
writing a control batch (a *marker*: commit or abort) for its producer into each partition it
wrote. Per KIP-98, a read_committed consumer delivers a transactional producer's records only once
that producer's commit marker follows them, drops them where an abort marker follows, and stops
at the first record still open (the last stable offset).

Apache Kafka helps its consumers by listing the aborted transactions in each Fetch response.
The embedded Tansu broker writes the markers but not that list, so librdkafka's read_committed
consumer hands out aborted records there. :func:`read_committed_view` reads the raw batches with
aiokafka's record-batch reader (not the service's parser) and applies the markers itself, so
exactly-once can be checked on any broker that writes markers.
"""

from __future__ import annotations

import struct
import time
from collections import defaultdict
from dataclasses import dataclass, field

from aiokafka.client import AIOKafkaClient
from aiokafka.record.default_records import DefaultRecordBatch
from aiokafka.record.memory_records import MemoryRecords

from .librdkafka_io import fetch_raw

ABORT, COMMIT = 0, 1
"""The control record key's type field (key = int16 version, int16 type)."""


@dataclass
class PartitionLog:
    """One partition read to its high watermark, sorted by what its markers decided."""

    committed: list[bytes] = field(default_factory=list)
    aborted: list[bytes] = field(default_factory=list)
    plain: list[bytes] = field(default_factory=list)
    """Records of non-transactional producers: visible at once."""
    open: dict[int, list[bytes]] = field(default_factory=lambda: defaultdict(list))
    """Per producer id, records no marker has ended yet."""
    markers: list[tuple[int, int]] = field(default_factory=list)
    """(producer id, ABORT or COMMIT) in log order."""

    def take(self, batch: DefaultRecordBatch) -> None:
        if batch.is_control_batch:
            for record in batch:
                (_, kind) = struct.unpack(">hh", bytes(record.key or b"")[:4])
                ended = self.open.pop(batch.producer_id, [])
                (self.committed if kind == COMMIT else self.aborted).extend(ended)
                self.markers.append((batch.producer_id, kind))
        elif batch.is_transactional:
            self.open[batch.producer_id].extend(bytes(r.value or b"") for r in batch)
        else:
            self.plain.extend(bytes(r.value or b"") for r in batch)


async def read_partition_logs(bootstrap: str, topic: str, timeout: float = 60.0) -> dict[int, PartitionLog]:
    """Every partition of ``topic`` from offset 0 to its high watermark, by raw Fetch (read_uncommitted)."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    await client.bootstrap()
    try:
        partitions = sorted(await client._wait_on_metadata(topic))  # no public call for it
        deadline = time.monotonic() + timeout
        return {p: await _read_partition(client, topic, p, deadline) for p in partitions}
    finally:
        await client.close()


async def _read_partition(client: AIOKafkaClient, topic: str, partition: int, deadline: float) -> PartitionLog:
    log, offset = PartitionLog(), 0
    while True:
        assert time.monotonic() < deadline, f"{topic}[{partition}] not read to its end in time"
        high, data = await fetch_raw(client, topic, partition, offset)
        batches = MemoryRecords(data)
        while (batch := batches.next_batch()) is not None:
            if batch.next_offset > offset:  # a fetch may start with the batch holding ``offset``
                log.take(batch)
                offset = batch.next_offset
        if offset >= high:
            return log


@dataclass
class CommittedView:
    """What a read_committed consumer reads from a topic (all partitions), and how much the markers dropped."""

    values: list[bytes]
    aborted: int


async def read_committed_view(bootstrap: str, topic: str) -> CommittedView:
    """The values a read_committed consumer reads from ``topic``, by the markers.

    Asserts that no transaction is left open (call it once the writers are done): an open one
    would hold back the last stable offset, and every record after it, from read_committed
    consumers.
    """
    logs = await read_partition_logs(bootstrap, topic)
    still_open = {p: sum(map(len, log.open.values())) for p, log in logs.items() if any(log.open.values())}
    assert not still_open, f"{topic}: transactions left open (records per partition): {still_open}"
    values = [value for log in logs.values() for value in (*log.plain, *log.committed)]
    return CommittedView(values, sum(len(log.aborted) for log in logs.values()))
