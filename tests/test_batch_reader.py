"""batch_reader against aiokafka's batch builder and codecs, and a real broker fed by librdkafka.

librdkafka's Python client cannot send a header key that is not UTF-8: it writes ``str(key)``
for bytes (``b"\\xff"`` goes out as the 7 characters ``b'\\xff'``), and a str with surrogates
crashes the interpreter. Batches with such keys are written here (aiokafka's builder, then the
key bytes put in) and sent whole with ``AIOKafkaProducer.send_batch``.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import confluent_kafka
import pytest
from aiokafka import AIOKafkaClient, AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.codec import gzip_encode, lz4_encode, snappy_encode, zstd_encode
from aiokafka.errors import (
    CorruptRecordException,
    KafkaError,
    NotLeaderForPartitionError,
    OffsetOutOfRangeError,
    UnknownTopicOrPartitionError,
)
from aiokafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder
from aiokafka.record.legacy_records import LegacyRecordBatchBuilder
from aiokafka.record.util import calc_crc32c
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream_learner.kafka import batch_format, batch_reader, fetch_request
from stream_learner.kafka.batch_format import RecordBatch, bytes_needed, parse_record_batches
from stream_learner.kafka.batch_reader import read_batch_at
from stream_learner.kafka.fetch_request import fetch_partition
from stream_learner.kernels.record_batch import ClosedBatch
from stream_learner.records import RawRecord

from .conftest import BrokerInfo, TestTopics

CODECS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}
ENCODERS: dict[int, Callable[[bytes], bytes]] = {1: gzip_encode, 2: snappy_encode, 3: lz4_encode, 4: zstd_encode}
BINARY_KEY = b"\xff\xfe-binary"
PLACEHOLDER = b"@@-binary"
"""Same length as BINARY_KEY: written by aiokafka's builder, then replaced."""
HEADER_SIZE = 61
CRC_AT, ATTRIBUTES_AT, LAST_DELTA_AT, COUNT_AT = 17, 21, 23, 57
TS = 1_700_000_000_000

Header = tuple[str, bytes | None]
Row = tuple[bytes | None, bytes | None, list[Header], int]
"""Key, value, headers, timestamp delta."""


# Writing batches ---------------------------------------------------------------------------


def aiokafka_batch(rows: list[Row], codec: int = 0, *, base_offset: int = 0, transactional: bool = False) -> bytearray:
    """``rows`` as aiokafka's builder writes them, the base offset set as a broker would."""
    builder = DefaultRecordBatchBuilder(
        2, codec, int(transactional), 7 if transactional else -1, 0 if transactional else -1, 0, 1 << 30
    )
    for delta, (key, value, headers, ts_delta) in enumerate(rows):
        assert builder.append(delta, TS + ts_delta, key=key, value=value, headers=headers) is not None
    batch: bytearray = builder.build()
    struct.pack_into(">q", batch, 0, base_offset)  # outside the CRC
    return batch


def with_crc(batch: bytearray) -> bytearray:
    struct.pack_into(">I", batch, CRC_AT, calc_crc32c(bytes(batch[ATTRIBUTES_AT:])))
    return batch


def compressed(plain: bytearray, codec: int) -> bytearray:
    """An uncompressed batch's records compressed with aiokafka's encoder for ``codec``."""
    if not codec:
        return plain
    batch = plain[:HEADER_SIZE] + ENCODERS[codec](bytes(plain[HEADER_SIZE:]))
    struct.pack_into(">i", batch, 8, len(batch) - 12)
    attributes = struct.unpack_from(">h", batch, ATTRIBUTES_AT)[0]
    struct.pack_into(">h", batch, ATTRIBUTES_AT, attributes | codec)
    return with_crc(batch)


def binary_key_batch(values: list[bytes], codec: int, timestamp_ms: int = TS) -> bytearray:
    """One record per value, each with header keys ``BINARY_KEY`` and ``plain``."""
    builder = DefaultRecordBatchBuilder(2, 0, 0, -1, -1, -1, 1 << 30)
    for delta, value in enumerate(values):
        headers = [(PLACEHOLDER.decode(), b"h-" + value), ("plain", b"p")]
        assert builder.append(delta, timestamp_ms, key=b"k-" + value, value=value, headers=headers) is not None
    plain = builder.build()
    body = bytes(plain[HEADER_SIZE:])
    assert body.count(PLACEHOLDER) == len(values)
    plain[HEADER_SIZE:] = body.replace(PLACEHOLDER, BINARY_KEY)
    return compressed(with_crc(plain), codec)


def flipped(batch: bytes | bytearray, at: int) -> bytes:
    changed = bytearray(batch)
    changed[at] ^= 0x01
    return bytes(changed)


def expected_records(batch: bytes | bytearray, topic: str = "t", partition: int = 0) -> list[RawRecord]:
    """What aiokafka's own reader makes of ``batch``."""
    parsed = DefaultRecordBatch(bytes(batch))
    assert parsed.validate_crc()
    return [RawRecord(topic, partition, r.offset, r.key, r.value, tuple(r.headers), r.timestamp) for r in parsed]


def one(data: bytes | bytearray) -> RecordBatch:
    batches = parse_record_batches(data, "t", 0)
    assert len(batches) == 1
    return batches[0]


# Unit: parsing -----------------------------------------------------------------------------

header_strategy = st.tuples(st.text(max_size=12), st.one_of(st.none(), st.binary(max_size=30)))
row_strategy = st.tuples(
    st.one_of(st.none(), st.binary(max_size=40)),
    st.one_of(st.none(), st.binary(max_size=3000)),
    st.lists(header_strategy, max_size=3),
    st.integers(-(1 << 40), 1 << 40),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(row_strategy, min_size=1, max_size=12), st.sampled_from(sorted(CODECS.values())), st.integers(0, 1 << 50)
)
def test_aiokafka_batches_parse_back_to_the_same_records(rows: list[Row], codec: int, base_offset: int) -> None:
    batch = aiokafka_batch(rows, codec, base_offset=base_offset)
    parsed = one(batch)
    assert parsed.problem is None
    assert parsed.codec == [name for name, number in CODECS.items() if number == codec][0]
    assert list(parsed.records) == expected_records(batch)
    assert [r.offset for r in parsed.records] == list(range(base_offset, base_offset + len(rows)))
    assert [r.timestamp_ms for r in parsed.records] == [TS + ts_delta for *_, ts_delta in rows]
    assert (parsed.base_offset, parsed.next_offset) == (base_offset, base_offset + len(rows))
    assert (parsed.producer_id, parsed.is_transactional, parsed.is_control, parsed.aborted) == (-1, False, False, False)


@pytest.mark.parametrize("codec", sorted(CODECS.values()))
def test_a_binary_header_key_survives_backslash_escaped_where_aiokafka_raises(codec: int) -> None:
    batch = binary_key_batch([b"a", b"b"], codec)
    parsed = one(batch)
    assert parsed.problem is None
    assert [r.headers for r in parsed.records] == [
        (("\\xff\\xfe-binary", b"h-a"), ("plain", b"p")),
        (("\\xff\\xfe-binary", b"h-b"), ("plain", b"p")),
    ]
    assert [(r.key, r.value) for r in parsed.records] == [(b"k-a", b"a"), (b"k-b", b"b")]
    with pytest.raises(UnicodeDecodeError):
        list(DefaultRecordBatch(bytes(batch)))


def test_log_append_time_gives_every_record_the_batch_max_timestamp() -> None:
    batch = aiokafka_batch([(b"k", b"v", [], 0), (b"k", b"v", [], 5)])
    attributes = struct.unpack_from(">h", batch, ATTRIBUTES_AT)[0]
    struct.pack_into(">h", batch, ATTRIBUTES_AT, attributes | 0x08)
    struct.pack_into(">q", batch, 35, TS + 99)  # MaxTimestamp
    assert [r.timestamp_ms for r in one(with_crc(batch)).records] == [TS + 99, TS + 99]


@pytest.mark.parametrize("codec", sorted(CODECS.values()))
def test_every_flipped_bit_past_the_magic_byte_is_a_corrupt_batch(codec: int) -> None:
    """The CRC covers attributes to end; the CRC field itself as well by construction."""
    batch = aiokafka_batch([(b"key", b"value" * 20, [("h", b"x")], 0)] * 3, codec, base_offset=40)
    for at in range(CRC_AT, len(batch)):
        parsed = one(flipped(batch, at))
        assert parsed.problem is not None and parsed.problem.reason == "corrupt_batch", at
        assert parsed.records == () and parsed.problem.raw == flipped(batch, at)
        assert parsed.base_offset == 40 and parsed.next_offset > parsed.base_offset


def test_an_unknown_codec_number_is_unsupported_codec() -> None:
    batch = aiokafka_batch([(b"k", b"v", [], 0)])
    struct.pack_into(">h", batch, ATTRIBUTES_AT, 5)
    parsed = one(with_crc(batch))
    assert parsed.problem is not None and parsed.problem.reason == "unsupported_codec"
    assert parsed.codec == "codec-5" and parsed.next_offset == 1


def test_a_codec_whose_library_is_missing_is_unsupported_codec(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(data: bytes) -> bytes:
        raise NotImplementedError("Zstd codec is not available")  # as aiokafka.codec says without cramjam

    monkeypatch.setitem(batch_format._CODECS, 4, ("zstd", missing))
    parsed = one(aiokafka_batch([(b"k", b"v", [], 0)], 4))
    assert parsed.problem is not None and parsed.problem.reason == "unsupported_codec" and parsed.codec == "zstd"


def test_data_that_does_not_decompress_is_a_corrupt_batch() -> None:
    batch = aiokafka_batch([(b"k", b"v", [], 0)])
    struct.pack_into(">h", batch, ATTRIBUTES_AT, 1)  # gzip, over records that are not gzip
    parsed = one(with_crc(batch))
    assert (
        parsed.problem is not None
        and parsed.problem.reason == "corrupt_batch"
        and "decompress" in parsed.problem.detail
    )


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda b: struct.pack_into(">i", b, COUNT_AT, 3), id="more-records-counted"),
        pytest.param(lambda b: struct.pack_into(">i", b, COUNT_AT, 1), id="fewer-records-counted"),
        pytest.param(lambda b: struct.pack_into(">i", b, LAST_DELTA_AT, 0), id="offset-past-last-delta"),
        pytest.param(lambda b: b.__setitem__(HEADER_SIZE, 0x7E), id="record-length-too-long"),
    ],
)
def test_records_that_do_not_parse_under_a_good_crc_are_a_corrupt_batch(change: Callable[[bytearray], None]) -> None:
    batch = aiokafka_batch([(b"k", b"v", [("h", b"x")], 0), (b"k2", b"v2", [], 1)])
    change(batch)
    parsed = one(with_crc(batch))
    assert (
        parsed.problem is not None
        and parsed.problem.reason == "corrupt_batch"
        and "does not parse" in parsed.problem.detail
    )


def test_message_format_v0_and_v1_are_unsupported_format_and_what_follows_still_reads() -> None:
    legacy = bytearray()
    for magic in (0, 1):
        builder = LegacyRecordBatchBuilder(magic, 0, 1 << 20)
        builder.append(0, timestamp=TS if magic else None, key=b"k", value=b"v")
        message = builder.build()
        struct.pack_into(">q", message, 0, 10 + magic)
        legacy += message
    modern = aiokafka_batch([(b"k", b"v", [], 0)], base_offset=12)
    batches = parse_record_batches(bytes(legacy + modern), "t", 0)
    assert [(b.problem and b.problem.reason, b.base_offset, b.next_offset) for b in batches] == [
        ("unsupported_format", 10, 11),
        ("unsupported_format", 11, 12),
        (None, 12, 13),
    ]


def test_a_corrupt_batch_ends_where_the_next_begins_whatever_its_header_says() -> None:
    first = aiokafka_batch([(b"k", b"v", [], 0)] * 2, base_offset=100)
    struct.pack_into(">i", first, LAST_DELTA_AT, 1 << 30)  # CRC no longer matches
    second = aiokafka_batch([(b"k", b"v", [], 0)], base_offset=102)
    batches = parse_record_batches(bytes(first + second), "t", 0)
    assert batches[0].problem is not None and (batches[0].base_offset, batches[0].next_offset) == (100, 102)
    assert batches[1].problem is None and [r.offset for r in batches[1].records] == [102]


def test_a_length_that_cannot_frame_a_batch_ends_the_parse() -> None:
    good = aiokafka_batch([(b"k", b"v", [], 0)], base_offset=5)
    broken = aiokafka_batch([(b"k", b"v", [], 0)], base_offset=6)
    struct.pack_into(">i", broken, 8, 3)
    batches = parse_record_batches(bytes(good + broken + good), "t", 0)
    assert [(b.problem and b.problem.reason, b.base_offset, b.next_offset) for b in batches] == [
        (None, 5, 6),
        ("corrupt_batch", 6, 7),
    ]
    assert batches[1].problem is not None and len(batches[1].problem.raw) == len(broken) + len(good)


def test_a_truncated_trailing_batch_is_left_out() -> None:
    first = aiokafka_batch([(b"k", b"v" * 50, [], 0)] * 3, 1)
    second = aiokafka_batch([(b"k", b"w" * 50, [], 0)] * 2, 3, base_offset=3)
    data = bytes(first + second)
    for cut in range(len(data) + 1):
        batches = parse_record_batches(data[:cut], "t", 0)
        assert [b.next_offset for b in batches] == [3, 5][: (cut >= len(first)) + (cut == len(data))], cut
        assert all(b.problem is None for b in batches)
        # Where the length of the batch cut short can be read, the bytes up to its end; else what there is.
        if 12 <= cut < len(first):
            assert bytes_needed(data[:cut]) == len(first)
        elif len(first) + 12 <= cut:
            assert bytes_needed(data[:cut]) == len(data)
        else:
            assert bytes_needed(data[:cut]) == cut


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_never_raise(data: bytes) -> None:
    for batch in parse_record_batches(data, "t", 0):
        assert batch.problem is not None or batch.records or batch.next_offset > batch.base_offset
    bytes_needed(data)


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(sorted(CODECS.values())),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=6),
)
def test_damaged_batches_never_raise(codec: int, damage: list[tuple[int, int]]) -> None:
    """Damage anywhere in a batch; then also its CRC made to match (so its records get parsed) and a batch after it."""
    batch = aiokafka_batch([(b"key", b"value" * 10, [("h", b"x"), ("k2", None)], 3)] * 4, codec)
    after = binary_key_batch([b"x"], codec)
    for at, value in damage:
        batch[at % len(batch)] = value
    for data in (bytes(batch), bytes(with_crc(bytearray(batch)) + after), bytes(batch[: len(batch) // 2])):
        parse_record_batches(data, "t", 0)
        bytes_needed(data)


# Unit: read_batch_at against a scripted broker ---------------------------------------------


class ScriptedBroker:
    """One partition's log, answered as Fetch v11 through the two parts of AIOKafkaClient that fetch_request uses.

    Like a broker before Fetch v3 (unless ``whole_first_batch``), it cuts its answer at the
    request's max bytes even inside the first batch; ``cap`` cuts every answer shorter still.
    ``aborted`` holds (producer id, first offset, marker offset); it lists those whose marker is
    at or past the fetch offset, as Kafka does.
    """

    API_VERSION = 11

    def __init__(
        self, log: bytes, *, high_watermark: int, aborted: list[tuple[int, int, int]] | None = None,
        error_code: int = 0, cap: int | None = None, whole_first_batch: bool = False, answer: bool = True,
    ) -> None:  # fmt: skip
        self.log, self.high_watermark, self.aborted = log, high_watermark, aborted or []
        self.error_code, self.cap, self.whole_first_batch, self.answer = error_code, cap, whole_first_batch, answer
        self.asked: list[int] = []
        self.cluster = self

    def leader_for_partition(self, tp: TopicPartition) -> int:
        return 0

    async def send(self, node_id: int, request: Any) -> Any:
        [(topic, [(partition, offset, max_bytes)])] = request.topics
        self.asked.append(max_bytes)
        start = self._start_of_batch_holding(offset)
        end = start + max_bytes
        if self.whole_first_batch and start < len(self.log):
            end = max(end, start + 12 + struct.unpack_from(">i", self.log, start + 8)[0])
        if self.cap is not None:
            end = min(end, start + self.cap)
        aborted = [(producer_id, first) for producer_id, first, marker in self.aborted if marker >= offset]
        part = (
            partition,
            self.error_code,
            self.high_watermark,
            self.high_watermark,
            0,
            aborted,
            -1,
            self.log[start:end],
        )
        response = type("FetchResponse", (), {"API_VERSION": self.API_VERSION})()
        response.topics = [(topic, [part] if self.answer else [])]
        return response

    def _start_of_batch_holding(self, offset: int) -> int:
        position = 0
        while position < len(self.log):
            base, length = struct.unpack_from(">qi", self.log, position)
            last = base + struct.unpack_from(">i", self.log, position + LAST_DELTA_AT)[0]
            if last >= offset:
                return position
            position += 12 + length
        return position


def control_batch(marker: int, base_offset: int, producer_id: int = 7) -> bytearray:
    """A transaction marker as a broker writes it: key version 0 and type (0 abort, 1 commit)."""
    batch = aiokafka_batch(
        [(struct.pack(">hh", 0, marker), struct.pack(">hi", 0, 0), [], 0)], base_offset=base_offset, transactional=True
    )
    struct.pack_into(">q", batch, 43, producer_id)  # ProducerId
    attributes = struct.unpack_from(">h", batch, ATTRIBUTES_AT)[0]
    struct.pack_into(">h", batch, ATTRIBUTES_AT, attributes | 0x20)
    return with_crc(batch)


TP = TopicPartition("t", 0)


async def test_a_batch_cut_short_by_max_bytes_is_fetched_again_whole() -> None:
    big = aiokafka_batch([(b"k", bytes(3000), [], 0)] * 3, base_offset=10)
    broker = ScriptedBroker(bytes(aiokafka_batch([(b"k", b"v", [], 0)] * 10) + big), high_watermark=13)
    batch = await read_batch_at(broker, TP, 11, read_committed=False, max_bytes=100)
    assert batch is not None and [r.offset for r in batch.records] == [11, 12]
    assert broker.asked == [100, len(big)]


async def test_a_broker_that_will_not_send_a_whole_batch_raises() -> None:
    broker = ScriptedBroker(bytes(aiokafka_batch([(b"k", bytes(3000), [], 0)])), high_watermark=1, cap=1000)
    with pytest.raises(KafkaError, match="sent 1000 of"):
        await read_batch_at(broker, TP, 0, read_committed=False, max_bytes=100)


async def test_a_batch_declaring_more_than_the_largest_batch_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batch_reader, "MAX_BATCH_BYTES", 1000)
    broker = ScriptedBroker(bytes(aiokafka_batch([(b"k", bytes(3000), [], 0)])), high_watermark=1)
    with pytest.raises(CorruptRecordException):
        await read_batch_at(broker, TP, 0, read_committed=False, max_bytes=100)


async def test_the_brokers_aborted_transactions_mark_a_batch_aborted_under_read_committed_only() -> None:
    """One batch per fetch (Fetch v3+ behaviour), so the abort marker is never in the same answer: the list decides."""
    log = aiokafka_batch([(b"k", b"v", [], 0)] * 2, transactional=True) + control_batch(0, 2)
    log += aiokafka_batch([(b"k", b"w", [], 0)], base_offset=3, transactional=True) + control_batch(1, 4)
    for read_committed in (False, True):
        broker = ScriptedBroker(bytes(log), high_watermark=5, aborted=[(7, 0, 2)], whole_first_batch=True)
        batches = [await read_batch_at(broker, TP, o, read_committed=read_committed, max_bytes=1) for o in range(5)]
        assert [(b.aborted, b.is_control, b.control_marker, len(b.records)) for b in batches if b is not None] == [
            (read_committed, False, None, 0 if read_committed else 2),
            (read_committed, False, None, 0 if read_committed else 1),
            (False, True, "abort", 0),
            (False, False, None, 1),
            (False, True, "commit", 0),
        ]


async def test_an_unreadable_batch_is_bounded_by_the_offset_asked_and_the_high_watermark() -> None:
    corrupt = aiokafka_batch([(b"k", b"v", [], 0)] * 3, base_offset=20)
    struct.pack_into(">i", corrupt, LAST_DELTA_AT, 1 << 20)  # CRC no longer matches
    broker = ScriptedBroker(bytes(corrupt), high_watermark=23)
    batch = await read_batch_at(broker, TP, 21, read_committed=True)
    assert batch is not None and batch.problem is not None and (batch.base_offset, batch.next_offset) == (20, 23)
    struct.pack_into(">i", corrupt, LAST_DELTA_AT, -5)
    broker = ScriptedBroker(bytes(corrupt), high_watermark=23)
    broker._start_of_batch_holding = lambda offset: 0  # type: ignore[method-assign]  # as the broker read the header before it broke
    batch = await read_batch_at(broker, TP, 21, read_committed=True)
    assert batch is not None and batch.problem is not None and (batch.base_offset, batch.next_offset) == (20, 22)


async def test_a_partition_error_raises_aiokafkas_error_and_a_missing_partition_reads_as_nothing() -> None:
    log = bytes(aiokafka_batch([(b"k", b"v", [], 0)]))
    with pytest.raises(NotLeaderForPartitionError):
        await read_batch_at(ScriptedBroker(log, high_watermark=1, error_code=6), TP, 0, read_committed=False)
    assert await read_batch_at(ScriptedBroker(log, high_watermark=1, answer=False), TP, 0, read_committed=False) is None


# Integration: a real broker, fed by librdkafka ---------------------------------------------


@asynccontextmanager
async def kafka_client(bootstrap: str) -> AsyncIterator[AIOKafkaProducer]:
    """A started producer; its ``client`` is the AIOKafkaClient that batch_reader takes."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        yield producer
    finally:
        await producer.stop()


def librdkafka_producer(bootstrap: str, **config: Any) -> confluent_kafka.Producer:
    return confluent_kafka.Producer({"bootstrap.servers": bootstrap, "linger.ms": 50, **config})


def produce_and_collect(
    producer: confluent_kafka.Producer, topic: str, partition: int, rows: list[Row]
) -> dict[int, RawRecord]:
    """Every row produced and acknowledged: offset (as the broker assigned) -> the record as it should read back."""
    delivered: dict[int, RawRecord] = {}

    def on_delivery(key: bytes | None, value: bytes | None, headers: list[Header]) -> Callable[..., None]:
        def delivery(error: confluent_kafka.KafkaError | None, message: confluent_kafka.Message) -> None:
            assert error is None, error
            offset, timestamp_ms = message.offset(), message.timestamp()[1]
            assert offset is not None
            delivered[offset] = RawRecord(
                topic, partition, offset, key, value,
                tuple(headers),  # type: ignore[arg-type]  # Kafka allows null header values; RawRecord.headers types bytes only
                timestamp_ms,
            )  # fmt: skip

        return delivery  # a delivery report's message carries no headers

    for key, value, headers, ts_delta in rows:
        producer.produce(
            topic, value=value, key=key, partition=partition, headers=[*headers], timestamp=TS + ts_delta,
            on_delivery=on_delivery(key, value, headers),
        )  # fmt: skip
    assert producer.flush(30) == 0
    assert len(delivered) == len(rows)
    return delivered


async def walk(client: AIOKafkaClient, tp: TopicPartition, *, read_committed: bool, **kwargs: Any) -> list[RecordBatch]:
    """Every batch of ``tp`` from offset 0 on, through read_batch_at."""
    batches: list[RecordBatch] = []
    offset = 0
    while (batch := await read_batch_at(client, tp, offset, read_committed=read_committed, **kwargs)) is not None:
        assert batch.next_offset > offset
        batches.append(batch)
        offset = batch.next_offset
    return batches


def rows_for(codec: str, count: int) -> Iterator[Row]:
    for i in range(count):
        headers: list[Header] = [("trace", f"{codec}-{i}".encode()), ("ключ-ü", None)] if i % 3 else []
        yield (None if i % 7 == 0 else f"key-{i}".encode(), f"{codec}-value-{i}".encode() * (1 + i % 5), headers, i)


@pytest.mark.integration
async def test_every_codec_from_librdkafka_reads_back_batch_by_batch(
    kafka_broker: BrokerInfo, topics: TestTopics
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    produced: dict[int, RawRecord] = {}
    for codec in CODECS:
        producer = librdkafka_producer(bootstrap, **{"compression.type": codec, "batch.num.messages": 12})
        produced |= produce_and_collect(producer, topics.events, 0, list(rows_for(codec, 50)))
    tp = TopicPartition(topics.events, 0)
    async with kafka_client(bootstrap) as producer:
        batches = await walk(producer.client, tp, read_committed=False)
        assert all(b.problem is None and not b.skip for b in batches)
        assert {b.codec for b in batches} == set(CODECS)
        assert len(batches) >= 5 * 50 // 12
        assert [r for b in batches for r in b.records] == [produced[o] for o in sorted(produced)]
        for offset in range(0, len(produced), 7):  # from inside a batch: that batch, from that offset
            batch = await read_batch_at(producer.client, tp, offset, read_committed=False)
            assert batch is not None and batch.base_offset <= offset < batch.next_offset
            assert list(batch.records) == [produced[o] for o in range(offset, batch.next_offset)]
        assert await read_batch_at(producer.client, tp, len(produced), read_committed=False) is None
        assert await read_batch_at(producer.client, TopicPartition(topics.events, 1), 0, read_committed=False) is None


@pytest.mark.integration
async def test_a_batch_larger_than_max_bytes_comes_whole(kafka_broker: BrokerInfo, topics: TestTopics) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    rows: list[Row] = [(b"k", bytes([i % 256]) * 5000, [], 0) for i in range(20)]
    produced = produce_and_collect(librdkafka_producer(bootstrap), topics.events, 2, rows)
    async with kafka_client(bootstrap) as producer:
        batches = await walk(producer.client, TopicPartition(topics.events, 2), read_committed=False, max_bytes=100)
        assert [r for b in batches for r in b.records] == [produced[o] for o in sorted(produced)]


@pytest.mark.integration
async def test_aiokafka_is_stuck_on_a_binary_header_key_and_read_batch_at_moves_on(
    kafka_broker: BrokerInfo, topics: TestTopics
) -> None:
    """Why the fallback exists: getmany raises on the batch at every try; read_batch_at reads it, getmany goes on."""
    bootstrap = kafka_broker.bootstrap_servers
    tp = TopicPartition(topics.events, 3)
    async with kafka_client(bootstrap) as producer:
        for codec in CODECS.values():
            values = [f"{codec}-{i}".encode() for i in range(4)]
            await (
                await producer.send_batch(
                    ClosedBatch(binary_key_batch(values, codec), 4), tp.topic, partition=tp.partition
                )
            )
        await (await producer.send(tp.topic, b"after", partition=tp.partition))

        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
        await consumer.start()
        try:
            consumer.assign([tp])
            for _ in range(2):
                with pytest.raises(UnicodeDecodeError):
                    await consumer.getmany(tp, timeout_ms=5000)
                assert await consumer.position(tp) == 0
            while (position := await consumer.position(tp)) < 5 * 4:
                batch = await read_batch_at(producer.client, tp, position, read_committed=False)
                assert batch is not None and batch.problem is None and len(batch.records) == 4
                assert all(r.headers[0] == ("\\xff\\xfe-binary", b"h-" + r.value) for r in batch.records)  # type: ignore[operator]  # value may be None by type; these are not
                consumer.seek(tp, batch.next_offset)
            fetched = await consumer.getmany(tp, timeout_ms=5000)
            assert [r.value for r in fetched[tp]] == [b"after"]
        finally:
            await consumer.stop()


@pytest.mark.integration
@pytest.mark.parametrize("max_bytes", [fetch_request.DEFAULT_FETCH_BYTES, 1], ids=["one-fetch", "batch-by-batch"])
async def test_transaction_markers_are_skipped_and_read_committed_skips_the_aborted_batch(
    kafka_broker: BrokerInfo, topics: TestTopics, max_bytes: int
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    if max_bytes == 1 and kafka_broker.kind == "tansu":
        pytest.skip("Tansu lists no aborted transactions: an abort is found only where its marker is in the same fetch")
    producer = librdkafka_producer(bootstrap, **{"transactional.id": f"tx-{topics.events}"})
    producer.init_transactions(30)
    produced: dict[str, dict[int, RawRecord]] = {}
    for name, outcome in (("first", "commit"), ("second", "abort"), ("third", "commit")):
        producer.begin_transaction()
        rows: list[Row] = [(f"{name}-{i}".encode(), f"{name}-value-{i}".encode(), [("ü", b"x")], i) for i in range(4)]
        produced[name] = produce_and_collect(producer, topics.events, 0, rows)
        (producer.commit_transaction if outcome == "commit" else producer.abort_transaction)(30)
    records = {name: [r for _, r in sorted(by_offset.items())] for name, by_offset in produced.items()}
    tp = TopicPartition(topics.events, 0)
    async with kafka_client(bootstrap) as client_owner:
        uncommitted = await walk(client_owner.client, tp, read_committed=False, max_bytes=max_bytes)
        committed = await walk(client_owner.client, tp, read_committed=True, max_bytes=max_bytes)
    for batches in (uncommitted, committed):
        markers = [b for b in batches if b.is_control]
        assert [b.control_marker for b in markers] == ["commit", "abort", "commit"]
        assert all(b.skip and b.records == () and b.problem is None for b in markers)
        assert all(b.is_transactional and b.producer_id >= 0 for b in batches)
    assert [r for b in uncommitted for r in b.records] == records["first"] + records["second"] + records["third"]
    assert not any(b.aborted for b in uncommitted)
    assert [r for b in committed for r in b.records] == records["first"] + records["third"]
    aborted = [b for b in committed if b.aborted]
    assert [(b.base_offset, b.last_offset, b.skip) for b in aborted] == [
        (min(produced["second"]), max(produced["second"]), True)
    ]


@pytest.mark.integration
async def test_fetch_reports_the_partition_and_raises_kafka_errors(
    kafka_broker: BrokerInfo, topics: TestTopics
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    produce_and_collect(librdkafka_producer(bootstrap), topics.labels, 1, list(rows_for("none", 5)))
    async with kafka_client(bootstrap) as producer:
        fetched = await fetch_partition(producer.client, TopicPartition(topics.labels, 1), 0, read_committed=True)
        assert fetched.high_watermark == 5 and fetched.last_stable_offset == 5 and fetched.api_version >= 4
        assert [b.next_offset for b in parse_record_batches(fetched.records, topics.labels, 1)][-1] == 5
        with pytest.raises(UnknownTopicOrPartitionError):
            await fetch_partition(producer.client, TopicPartition(topics.labels, 99), 0, read_committed=False)
        if kafka_broker.kind != "tansu":  # Tansu answers an offset past the end with no records and no error
            with pytest.raises(OffsetOutOfRangeError):
                await fetch_partition(producer.client, TopicPartition(topics.labels, 1), 1000, read_committed=False)
