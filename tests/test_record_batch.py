"""PackedRecordBatch against aiokafka's own batch builder, and send_partitioned through a real broker."""

from __future__ import annotations

import numpy as np
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder
from hypothesis import given, settings, strategies as st

from stream_learner.kafka.clients import MAX_BATCH_BYTES
from stream_learner.kafka.partitioned_send import SMALL_GROUP, send_partitioned
from stream_learner.kernels.record_batch import PackedRecordBatch, PackedRecords, packs_batches

from .conftest import BrokerInfo, TestTopics
from .stream_io import read_topic

records_strategy = st.lists(
    st.tuples(st.binary(min_size=0, max_size=40), st.binary(min_size=0, max_size=20_000)), min_size=1, max_size=40
)


def aiokafka_batch(pairs: list[tuple[bytes, bytes]], timestamp_ms: int) -> bytes:
    builder = DefaultRecordBatchBuilder(2, 0, is_transactional=0, producer_id=-1, producer_epoch=-1, base_sequence=0, batch_size=1 << 30)
    for offset, (key, value) in enumerate(pairs):
        assert builder.append(offset, timestamp_ms, key=key, value=value, headers=[]) is not None
    return bytes(builder.build())


@settings(max_examples=100, deadline=None)
@given(records_strategy, st.data())
def test_a_packed_batch_is_byte_for_byte_aiokafkas(pairs: list[tuple[bytes, bytes]], data: st.DataObject) -> None:
    """Keys and values of every length class of varint (up to 3 bytes), any subset of rows in any order."""
    records = PackedRecords.of([k for k, _ in pairs], [v for _, v in pairs])
    rows = np.array(data.draw(st.lists(st.integers(0, len(pairs) - 1), min_size=1, max_size=60)), np.int64)
    batch = PackedRecordBatch(records, rows)
    built = bytes(batch._build())
    assert built == aiokafka_batch([pairs[i] for i in rows.tolist()], batch._timestamp_ms)
    assert batch.record_count() == len(rows) and batch.size() == len(built)
    parsed = DefaultRecordBatch(built)
    assert parsed.validate_crc()
    assert [(r.key, r.value) for r in parsed] == [pairs[i] for i in rows.tolist()]


@settings(max_examples=100, deadline=None)
@given(records_strategy, st.integers(100, 50_000))
def test_split_keeps_order_covers_every_row_and_fits_the_limit(pairs: list[tuple[bytes, bytes]], max_bytes: int) -> None:
    records = PackedRecords.of([k for k, _ in pairs], [v for _, v in pairs])
    rows = np.arange(len(pairs))[::-1].copy()
    runs = records.split(rows, max_bytes)
    assert np.array_equal(np.concatenate(runs), rows)
    for run in runs:
        size = PackedRecordBatch(records, run).size()
        assert size <= max_bytes or len(run) == 1, "only a record too large alone may exceed the limit"


async def test_only_a_plain_producer_takes_packed_batches(kafka_broker: BrokerInfo) -> None:
    plain = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap_servers)
    compressed = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap_servers, compression_type="gzip")
    idempotent = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap_servers, enable_idempotence=True)
    try:
        assert packs_batches(plain)
        assert not packs_batches(compressed)
        assert not packs_batches(idempotent)
    finally:
        for producer in (plain, compressed, idempotent):
            await producer.stop()  # never started: only marks it closed


@pytest.mark.integration
@pytest.mark.parametrize("compression", [None, "gzip"])
async def test_send_partitioned_delivers_every_record_to_its_partition_in_order(
    kafka_broker: BrokerInfo, topics: TestTopics, compression: str | None
) -> None:
    """Large groups (packed, or aiokafka's builder with compression), one split past the batch size, and small groups."""
    rng = np.random.default_rng(0)
    sizes = {0: 3 * MAX_BATCH_BYTES // 2000, 1: SMALL_GROUP + 1, 2: SMALL_GROUP - 1}
    partitions = rng.permutation(np.repeat(list(sizes), list(sizes.values()))).astype(np.int64)
    keys = [f"id-{i}".encode() for i in range(len(partitions))]
    values = [bytes([65 + i % 26]) * 2000 if p == 0 else f"v{i}".encode() for i, p in enumerate(partitions.tolist())]
    producer = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap_servers, compression_type=compression)
    await producer.start()
    try:
        assert packs_batches(producer) == (compression is None)
        futures = await send_partitioned(producer, topics.predictions, PackedRecords.of(keys, values), partitions, 4)
        for future in futures:
            await future
    finally:
        await producer.stop()
    read = await read_topic(kafka_broker.bootstrap_servers, topics.predictions, until_count=len(keys), timeout=20)
    assert len(read) == len(keys)
    for partition in sizes:
        expected = [(keys[i], values[i]) for i in np.flatnonzero(partitions == partition).tolist()]
        got = sorted((r for r in read if r.partition == partition), key=lambda r: r.offset)
        assert [(r.key, r.value) for r in got] == expected
