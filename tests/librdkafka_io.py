"""An independent Kafka client for field-fault tests: confluent-kafka (librdkafka), not the service's aiokafka.

Producing contract records (any codec, transactional or not), creating topics, reading a topic
to its end, reading a group's committed offsets without joining the group, and probing what the
broker does with aborted transactions. Everything here blocks (librdkafka's API is synchronous).

One thing librdkafka cannot do: send a header whose key is not UTF-8 text (confluent-kafka
``str()``s a ``bytes`` key, so ``b"\\xff\\xfe"`` goes out as the 11 characters ``b'\\xff\\xfe'``,
and a ``str`` key with lone surrogates crashes the interpreter). :func:`raw_record_batch` writes
such records as a record batch of its own, for ``AIOKafkaProducer.send_batch``. And librdkafka
shows records, not the batches they are stored in: :func:`batch_headers` reads those (codec,
record count, control marker) from raw Fetch responses.
"""

from __future__ import annotations

import asyncio
import struct
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import confluent_kafka as ck
import confluent_kafka.admin
import orjson
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.client import AIOKafkaClient
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.record.util import calc_crc32c

from stream_learner.kernels.record_batch import ClosedBatch
from stream_learner.tools.synthetic import SyntheticBatch

Record = tuple[bytes, bytes]
"""(key, value)"""


# --- contract records ---------------------------------------------------------------------------


def event_records(batch: SyntheticBatch) -> list[Record]:
    """``batch`` as contract events: ``{"id", "features"}`` keyed by id."""
    return [
        (i.encode(), orjson.dumps({"id": i, "features": [float(x) for x in row]}))
        for i, row in zip(batch.ids, batch.features.tolist())
    ]


def label_records(ids: Iterable[str], labels: Iterable[int]) -> list[Record]:
    """Contract labels ``{"id", "label"}`` keyed by id."""
    return [(i.encode(), orjson.dumps({"id": i, "label": int(y)})) for i, y in zip(ids, labels)]


# --- producing ----------------------------------------------------------------------------------


class Producer:
    """A confluent-kafka producer whose every delivery report is checked.

    ``config`` is librdkafka configuration with dots or underscores (``compression_type="zstd"``).
    """

    def __init__(self, bootstrap: str, **config: Any) -> None:
        settings = {"bootstrap.servers": bootstrap, "linger.ms": 5, "client.id": "field-fault-test"}
        settings.update({k.replace("_", "."): v for k, v in config.items()})
        self.producer = ck.Producer(settings)
        self.errors: list[str] = []
        self.delivered = 0

    def _report(self, error: ck.KafkaError | None, message: ck.Message) -> None:
        if error is not None:
            self.errors.append(f"{message.topic()}[{message.partition()}]: {error}")
        else:
            self.delivered += 1

    def send(self, topic: str, records: Iterable[Record], *, headers: Sequence[tuple[str, bytes]] | None = None) -> int:
        """Queue ``records`` (without waiting for them); returns how many."""
        n = 0
        for key, value in records:
            while True:
                try:
                    self.producer.produce(topic, value, key, headers=list(headers) if headers else None, on_delivery=self._report)
                    break
                except BufferError:  # the local queue is full: let deliveries drain
                    self.producer.poll(0.05)
            n += 1
        self.producer.poll(0)
        return n

    def flush(self, timeout: float = 60.0) -> None:
        """Wait until every queued record is acknowledged; fails on a delivery error or a timeout."""
        left = self.producer.flush(timeout)
        assert left == 0, f"{left} records not delivered within {timeout}s"
        assert not self.errors, f"delivery failed: {self.errors[:5]}"

    # Transactions (the producer must have been made with ``transactional_id``).

    def init_transactions(self, timeout: float = 30.0) -> None:
        self.producer.init_transactions(timeout)

    def send_in_transactions(self, topic: str, records: Sequence[Record], *, every: int, timeout: float = 30.0) -> int:
        """``records`` in transactions of ``every`` records each, each committed; returns the number of transactions."""
        transactions = 0
        for start in range(0, len(records), every):
            self.producer.begin_transaction()
            self.send(topic, records[start : start + every])
            self.producer.commit_transaction(timeout)  # flushes first
            transactions += 1
        assert not self.errors, f"delivery failed: {self.errors[:5]}"
        return transactions

    def send_aborted(self, records: dict[str, Sequence[Record]], timeout: float = 30.0) -> None:
        """One transaction of ``records`` (topic -> records) that reach the log and are then aborted.

        The records are flushed before the abort: librdkafka's abort drops what it has not sent yet,
        and then nothing would be in the log for a consumer to hide.
        """
        self.producer.begin_transaction()
        for topic, items in records.items():
            self.send(topic, items)
        self.flush(timeout)
        self.producer.abort_transaction(timeout)

    def close(self) -> None:
        self.producer.flush(10)


def produce(bootstrap: str, sends: dict[str, Sequence[Record]], **config: Any) -> None:
    """Each topic's records through one new producer of ``config``; returns once all are acknowledged."""
    producer = Producer(bootstrap, **config)
    try:
        for topic, records in sends.items():
            producer.send(topic, records)
        producer.flush()
    finally:
        producer.close()


def produce_stream(bootstrap: str, events_topic: str, labels_topic: str, batch: SyntheticBatch, *, labels: bool = True, **config: Any) -> None:
    """``batch``'s events, then (unless ``labels`` is False) their labels, all acknowledged."""
    sends: dict[str, Sequence[Record]] = {events_topic: event_records(batch)}
    produce(bootstrap, sends, **config)
    if labels:
        produce(bootstrap, {labels_topic: label_records(batch.ids, batch.labels.tolist())}, **config)


# --- reading ------------------------------------------------------------------------------------


def partitions_of(client: ck.Consumer | ck.Producer, topic: str, timeout: float = 10.0) -> list[int]:
    found = client.list_topics(topic, timeout=timeout).topics[topic]
    assert found.error is None, f"{topic}: {found.error}"
    return sorted(found.partitions)


def read_to_end(bootstrap: str, topic: str, *, isolation_level: str = "read_uncommitted", timeout: float = 30.0) -> list[ck.Message]:
    """Every record of ``topic``, from the beginning up to where each partition ended when it was reached.

    The end is librdkafka's partition EOF (the high watermark, or the last stable offset for
    ``read_committed``, of a fetch response): the embedded Tansu broker's ListOffsets answer is
    not the end of a partition, fetch responses are. Call it once nothing writes to ``topic``.
    """
    consumer = ck.Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"field-fault-reader-{uuid.uuid4().hex[:8]}",  # never joined: assign(), no commits
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": isolation_level,
            "fetch.wait.max.ms": 50,
        }
    )
    try:
        partitions = partitions_of(consumer, topic)
        consumer.assign([ck.TopicPartition(topic, p, ck.OFFSET_BEGINNING) for p in partitions])
        records: list[ck.Message] = []
        left = set(partitions)
        deadline = time.monotonic() + timeout
        while left:
            assert time.monotonic() < deadline, f"{topic}: partitions {sorted(left)} not read to their end within {timeout}s"
            for message in consumer.consume(1000, 0.2):
                error = message.error()
                if error is None:
                    records.append(message)
                elif error.code() == ck.KafkaError._PARTITION_EOF:
                    left.discard(message.partition())
                else:
                    raise AssertionError(f"reading {topic}: {error}")
        return records
    finally:
        consumer.close()


def values_by_id(records: Iterable[ck.Message]) -> dict[str, list[dict[str, Any]]]:
    """Contract records (JSON with an ``id``) grouped by id; checks that each record's key is its id."""
    by_id: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for message in records:
        value = orjson.loads(message.value())
        assert message.key() == value["id"].encode(), f"key {message.key()!r} is not the id of {value}"
        by_id[value["id"]].append(value)
    return by_id


def read_predictions(bootstrap: str, topic: str, timeout: float = 30.0) -> dict[str, list[dict[str, Any]]]:
    """The predictions topic read to its end, grouped by event id."""
    return values_by_id(read_to_end(bootstrap, topic, timeout=timeout))


def wait_for_predictions(bootstrap: str, topic: str, ids: set[str], timeout: float = 60.0) -> dict[str, list[dict[str, Any]]]:
    """Reads ``topic`` to its end until it holds a prediction for each of ``ids``."""
    deadline = time.monotonic() + timeout
    while True:
        found = read_predictions(bootstrap, topic)
        missing = ids - set(found)
        if not missing:
            return found
        assert time.monotonic() < deadline, f"{len(missing)} events not predicted within {timeout}s, e.g. {sorted(missing)[:5]}"
        time.sleep(0.5)


def committed_offsets(bootstrap: str, group: str, topics: dict[str, int]) -> dict[tuple[str, int], int]:
    """``group``'s committed offsets (-1: none) on every partition of ``topics`` (topic -> partition count).

    OffsetFetch from a consumer that never subscribes: the group is not joined or disturbed.
    """
    consumer = ck.Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        asked = [ck.TopicPartition(t, p) for t, n in topics.items() for p in range(n)]
        found = consumer.committed(asked, timeout=10)
        out = {}
        for tp in found:
            assert tp.error is None, f"{tp.topic}[{tp.partition}]: {tp.error}"
            out[(tp.topic, tp.partition)] = tp.offset if tp.offset >= 0 else -1
        return out
    finally:
        consumer.close()


# --- probing the broker -------------------------------------------------------------------------


def broker_hides_aborted_records(bootstrap: str, topic: str) -> bool:
    """Whether a ``read_committed`` consumer of this broker skips records of aborted transactions.

    ``topic`` is a fresh one-partition topic: it gets a committed record, an aborted one (in
    the log, flushed before the abort) and a committed one.
    """
    producer = Producer(bootstrap, transactional_id=f"probe-{uuid.uuid4().hex[:8]}")
    try:
        producer.init_transactions()
        producer.send_in_transactions(topic, [(b"k", b"committed-1")], every=1)
        producer.send_aborted({topic: [(b"k", b"aborted")]})
        producer.send_in_transactions(topic, [(b"k", b"committed-2")], every=1)
    finally:
        producer.close()
    seen = [m.value() for m in read_to_end(bootstrap, topic, isolation_level="read_committed")]
    assert b"committed-1" in seen and b"committed-2" in seen, f"read_committed lost committed records: {seen}"
    return b"aborted" not in seen


# --- what librdkafka cannot send: header keys that are not UTF-8 --------------------------------

_BATCH_HEADER = struct.Struct(">qiibIhiqqqhii")
"""BaseOffset, Length, PartitionLeaderEpoch, Magic, CRC, Attributes, LastOffsetDelta,
FirstTimestamp, MaxTimestamp, ProducerId, ProducerEpoch, BaseSequence, RecordCount."""
_CRC_AT = struct.calcsize(">qiib")
_CRC_FROM = struct.calcsize(">qiibI")


def _varint(value: int) -> bytes:
    zigzag = (value << 1) ^ (value >> 63)
    out = bytearray()
    while zigzag >= 0x80:
        out.append((zigzag & 0x7F) | 0x80)
        zigzag >>= 7
    out.append(zigzag)
    return bytes(out)


def _sized(data: bytes | None) -> bytes:
    return _varint(-1) if data is None else _varint(len(data)) + data


def raw_record_batch(records: Sequence[tuple[bytes | None, bytes | None, Sequence[tuple[bytes, bytes | None]]]]) -> ClosedBatch:
    """An uncompressed v2 record batch whose header keys are raw bytes, written here, not by a client
    (for a producer that is neither idempotent nor transactional)."""
    assert records
    body = bytearray()
    for delta, (key, value, headers) in enumerate(records):
        record = b"\x00" + _varint(0) + _varint(delta) + _sized(key) + _sized(value) + _varint(len(headers))
        record += b"".join(_sized(k) + _sized(v) for k, v in headers)
        body += _varint(len(record)) + record
    now, count = int(time.time() * 1000), len(records)
    buffer = bytearray(_BATCH_HEADER.size) + body
    _BATCH_HEADER.pack_into(buffer, 0, 0, len(buffer) - 12, -1, 2, 0, 0, count - 1, now, now, -1, -1, -1, count)
    struct.pack_into(">I", buffer, _CRC_AT, calc_crc32c(bytes(buffer[_CRC_FROM:])))
    return ClosedBatch(buffer, count)


async def send_raw_batches(bootstrap: str, topic: str, batches: dict[int, ClosedBatch]) -> None:
    """Each partition's batch, acknowledged (aiokafka only carries the bytes; it does not write them)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        futures = [await producer.send_batch(batch, topic, partition=p) for p, batch in batches.items()]
        for future in futures:
            await future
    finally:
        await producer.stop()


# --- topics -------------------------------------------------------------------------------------


def create_topics(bootstrap: str, topics: dict[str, int], timeout: float = 30.0) -> None:
    """Create ``topics`` (name -> partition count) with librdkafka's admin client; returns once every
    partition has a leader in the metadata. A topic that exists already is left as it is."""
    admin = ck.admin.AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([ck.admin.NewTopic(t, n, 1) for t, n in topics.items()], operation_timeout=timeout)
    for topic, future in futures.items():
        try:
            future.result(timeout)
        except ck.KafkaException as exc:
            if exc.args[0].code() != ck.KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    deadline = time.monotonic() + timeout
    while True:
        listed = admin.list_topics(timeout=timeout).topics
        ready = {
            t for t, n in topics.items()
            if t in listed and listed[t].error is None and len(listed[t].partitions) == n
            and all(p.leader >= 0 for p in listed[t].partitions.values())
        }  # fmt: skip
        if ready == set(topics):
            return
        assert time.monotonic() < deadline, f"topics not visible within {timeout}s: {sorted(set(topics) - ready)}"
        time.sleep(0.1)


# --- what librdkafka does not show: how the records are batched on the broker -------------------

CODEC_NAMES = {0: "none", 1: "gzip", 2: "snappy", 3: "lz4", 4: "zstd"}


@dataclass(frozen=True)
class BatchHeader:
    partition: int
    base_offset: int
    codec: str
    next_offset: int
    records: int
    control: bool


def _batch_headers(partition: int, data: bytes) -> list[BatchHeader]:
    """The headers of the whole record batches in ``data`` (a fetch response's records)."""
    out, at = [], 0
    while at + _BATCH_HEADER.size <= len(data):
        base, length, _, magic, _, attributes, last_delta, *_rest, count = _BATCH_HEADER.unpack_from(data, at)
        if at + 12 + length > len(data):
            break  # the tail of a fetch response may be a partial batch
        assert magic == 2, f"partition {partition} @ {base}: message format {magic}"
        out.append(BatchHeader(partition, base, CODEC_NAMES[attributes & 0x07], base + last_delta + 1, count, bool(attributes & 0x20)))
        at += 12 + length
    return out


async def fetch_raw(client: AIOKafkaClient, topic: str, partition: int, offset: int) -> tuple[int, bytes]:
    """One read_uncommitted Fetch of ``topic[partition]`` from ``offset``: the high watermark and the raw record batches."""
    leader = client.cluster.leader_for_partition(TopicPartition(topic, partition))
    request = FetchRequest(100, 1, 64 << 20, 0, [(topic, [(partition, offset, 16 << 20)])])
    response = await client.send(leader, request)
    (_, ((_, error, high, *_, records),)), = response.topics  # fmt: skip
    assert error == 0, f"fetch {topic}[{partition}] @ {offset}: error {error}"
    return high, bytes(records or b"")


def batch_headers(bootstrap: str, topic: str, timeout: float = 30.0) -> list[BatchHeader]:
    """Every record batch of ``topic`` as stored, header only (not decompressed).

    librdkafka hands out records, not the batches and codecs they came in; this sends raw
    Fetch requests with aiokafka's protocol classes and reads the batch headers itself.
    """

    async def fetch_all() -> list[BatchHeader]:
        client = AIOKafkaClient(bootstrap_servers=bootstrap)
        await client.bootstrap()
        try:
            partitions = sorted(await client._wait_on_metadata(topic))  # noqa: SLF001 - no public call for it
            found: list[BatchHeader] = []
            deadline = time.monotonic() + timeout
            for p in partitions:
                offset = 0
                while True:
                    assert time.monotonic() < deadline, f"{topic}[{p}] not read within {timeout}s"
                    high, records = await fetch_raw(client, topic, p, offset)
                    headers = _batch_headers(p, records)
                    found += [h for h in headers if h.base_offset >= offset]
                    if not headers or headers[-1].next_offset >= high:
                        break
                    offset = headers[-1].next_offset
            return found
        finally:
            await client.close()

    return asyncio.run(fetch_all())
