"""Producing many records at once: one record batch per partition, keeping each partition's order."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from aiokafka import AIOKafkaProducer

from stream_learner.kafka.clients import MAX_BATCH_BYTES
from stream_learner.kernels.record_batch import PackedRecordBatch, PackedRecords, packs_batches

SMALL_GROUP = 16
"""Fewer records than this of one partition go through ``send`` instead of a record batch of their own."""


async def send_partitioned(
    producer: AIOKafkaProducer,
    topic: str,
    records: PackedRecords,
    partitions: np.ndarray | None,
    source_partition_count: int | None,
    *,
    packed: bool = True,
) -> list[asyncio.Future[Any]]:
    """Produce ``records`` as one record batch per partition; returns one delivery future per batch.

    Record ``i`` goes to partition ``partitions[i]`` (the events partition it came from) when
    ``topic`` has ``source_partition_count`` partitions, i.e. is co-partitioned with the source:
    for a keyed source record that is the partition the default partitioner would choose, and
    per-key order is kept, without hashing every key in Python. Otherwise (or with no
    ``partitions``) the producer's own partitioner picks, once per key. Records of one
    partition keep their order; a partition's group of fewer than ``SMALL_GROUP`` records is
    appended to the producer's open batch record by record instead. Larger groups are written
    by :class:`PackedRecordBatch` where the producer takes it and ``packed`` (``CPU_KERNELS=auto``),
    else by aiokafka's builder.
    """
    if partitions is None or len(partitions) != len(records):
        partitions = await _partitions_by_key(producer, topic, records)
    elif source_partition_count != len(await _partitions_of(producer, topic)):
        partitions = await _partitions_by_key(producer, topic, records)
    futures: list[asyncio.Future[Any]] = []
    packs = packed and packs_batches(producer)
    order = np.argsort(partitions, kind="stable")
    for group in np.split(order, np.flatnonzero(np.diff(partitions[order])) + 1):
        if len(group):
            futures += await _send_group(producer, topic, records, group, int(partitions[group[0]]), packs)
    return futures


async def _send_group(
    producer: AIOKafkaProducer, topic: str, records: PackedRecords, group: np.ndarray, partition: int, packs: bool
) -> list[asyncio.Future[Any]]:
    """Records ``group`` (in order) to ``partition``."""
    if len(group) < SMALL_GROUP:
        # A few records: into the partition's open batch in the accumulator, like send() does. A record
        # batch of their own would cost a produce round trip each (send_batch waits for the previous one).
        return [
            await producer.send(topic, records.value(i), key=records.key(i), partition=partition)
            for i in group.tolist()
        ]
    if packs:
        batches = (PackedRecordBatch(records, rows) for rows in records.split(group, MAX_BATCH_BYTES))
        return [await producer.send_batch(batch, topic, partition=partition) for batch in batches]
    return await _send_built(producer, topic, records, group.tolist(), partition)


async def _partitions_of(producer: AIOKafkaProducer, topic: str) -> set[int]:
    known: set[int] = producer.client.cluster.partitions_for_topic(topic) or set()
    return known or set(await producer.partitions_for(topic))


async def _partitions_by_key(producer: AIOKafkaProducer, topic: str, records: PackedRecords) -> np.ndarray:
    """The partition the producer's own partitioner picks for each record's key."""
    all_partitions = sorted(await _partitions_of(producer, topic))
    available = list(producer.client.cluster.available_partitions_for_topic(topic)) or all_partitions
    # private API: the producer's own partitioner, so a key lands where send() would put it.
    partitioner = producer._partitioner
    keys = (records.key(i) for i in range(len(records)))
    return np.fromiter((partitioner(k, all_partitions, available) for k in keys), np.int64, len(records))


async def _send_built(
    producer: AIOKafkaProducer, topic: str, records: PackedRecords, rows: list[int], partition: int
) -> list[asyncio.Future[Any]]:
    """``rows`` through aiokafka's batch builder (which writes the producer's compression and idempotence state)."""
    futures = []
    batch = producer.create_batch()
    for i in rows:
        key, value = records.key(i), records.value(i)
        if batch.append(timestamp=None, key=key, value=value) is None:
            futures.append(await producer.send_batch(batch, topic, partition=partition))
            batch = producer.create_batch()
            batch.append(timestamp=None, key=key, value=value)
    futures.append(await producer.send_batch(batch, topic, partition=partition))
    return futures
