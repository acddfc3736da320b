"""A record batch that no client can read (gzip that does not decompress, under a good CRC) sits between good
batches of an events partition: it goes to the dead-letter topic whole, with its offset range and
the reason, and the partition goes on. Real broker, the service as a real child process."""

from __future__ import annotations

import struct

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, KafkaError

from stream_learner.kafka.librdkafka.read_past import ReadingPast
from stream_learner.kafka.librdkafka.records import MessageRecord
from stream_learner.kernels.record_batch import ClosedBatch
from stream_learner.records import RawRecord, Rejected
from stream_learner.tools.synthetic import DriftingStream

from .conftest import INPUT_DIM, BrokerInfo, StartService, TestTopics
from .observe import read_to_end, wait_for_progress
from .stream_io import produce_labels
from .test_batch_reader import ATTRIBUTES_AT, aiokafka_batch, with_crc

pytestmark = pytest.mark.integration

STREAM = DriftingStream(INPUT_DIM, seed=5)
GZIP = 1
HEADER_SIZE = 61


def event_rows(start: int, count: int) -> tuple[list[str], list[tuple[bytes, bytes, list[tuple[str, bytes]], int]]]:
    batch = STREAM.batch(start, count)
    rows = [
        (event_id.encode(), orjson.dumps({"id": event_id, "features": features.tolist()}), [], i)
        for i, (event_id, features) in enumerate(zip(batch.ids, batch.features))
    ]
    return batch.ids, rows


def undecompressable(rows: list[tuple[bytes, bytes, list[tuple[str, bytes]], int]]) -> bytearray:
    """A batch of ``rows`` whose header says gzip and whose records are not gzip; its CRC is right."""
    batch = aiokafka_batch(rows)
    batch[HEADER_SIZE:] = b"\x1f\x8b not gzip at all " * 8
    struct.pack_into(">i", batch, 8, len(batch) - 12)
    attributes = struct.unpack_from(">h", batch, ATTRIBUTES_AT)[0]
    struct.pack_into(">h", batch, ATTRIBUTES_AT, attributes | GZIP)
    return with_crc(batch)


@pytest.mark.both_clients
async def test_a_batch_that_does_not_decompress_is_dead_lettered_with_its_offsets_and_the_partition_goes_on(
    kafka_broker: BrokerInfo, topics: TestTopics, start_service: StartService
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    before_ids, before = event_rows(0, 20)
    bad_ids, bad = event_rows(20, 10)
    after_ids, after = event_rows(30, 20)
    unreadable = undecompressable(bad)

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        await (await producer.send_batch(ClosedBatch(aiokafka_batch(before), 20), topics.events, partition=0))  # type: ignore[arg-type]
        try:
            await (await producer.send_batch(ClosedBatch(unreadable, 10), topics.events, partition=0))  # type: ignore[arg-type]
        except KafkaError as exc:
            pytest.skip(f"this broker refuses a batch that does not decompress on produce ({exc!r}), so none can be read")
        await (await producer.send_batch(ClosedBatch(aiokafka_batch(after), 20), topics.events, partition=0))  # type: ignore[arg-type]
        good = before_ids + after_ids
        await produce_labels(producer, topics.labels, good, STREAM.batch(0, 50).labels[[*range(20), *range(30, 50)]])
    finally:
        await producer.stop()

    service = start_service(log_interval_s=0.2)
    await wait_for_progress(service, lambda p: p["examples_trained"] >= len(good) and p["queued_examples"] == 0, "good events trained")
    dead = await read_to_end(bootstrap, topics.dead_letter)
    assert service.alive()
    assert service.stop() == 0

    predicted = {orjson.loads(r.value)["id"] for r in await read_to_end(bootstrap, topics.predictions)}
    assert predicted == set(good)
    assert not predicted & set(bad_ids)
    assert len(dead) == 1, [dict(d.headers) for d in dead]
    headers = dict(dead[0].headers)
    assert headers["dlq.reason"] == b"corrupt_batch"
    assert headers["dlq.source.topic"] == topics.events.encode()
    assert (headers["dlq.source.partition"], headers["dlq.source.offset"]) == (b"0", b"20")
    assert b"offsets 20..29" in headers["dlq.detail"]
    assert dead[0].value is not None and dead[0].value[ATTRIBUTES_AT:] == bytes(unreadable[ATTRIBUTES_AT:])  # the batch as stored
    logged = [e for e in service.log_events() if e.get("event") == "batch_unreadable"]
    assert [e["where"] for e in logged] == [f"{topics.events}[0]@20..29"]


# --- librdkafka: a dead letter's headers read again from the raw batch ------------------------------


class _SilentBroker:
    """An AIOKafkaClient stand-in whose broker never answers a Fetch."""

    def __init__(self) -> None:
        self.cluster = self
        self.fetches = 0

    def leader_for_partition(self, tp: object) -> int:
        return 0

    async def send(self, node: int, request: object) -> object:
        self.fetches += 1
        raise KafkaConnectionError("the broker does not answer")


async def test_a_dead_letter_keeps_librdkafkas_headers_when_the_raw_batch_cannot_be_read() -> None:
    def rejected(record: RawRecord) -> Rejected:
        return Rejected(record, "invalid_json", "value is not JSON")

    with_headers = MessageRecord("events", 0, 7, b"k", b"{", (("a", b"1"),), headers_to_reread=True)
    plain = MessageRecord("events", 0, 8, b"k", b"{")
    read_by_aiokafka = RawRecord("events", 1, 9, b"k", b"{", (("b", b"2"),))
    broker = _SilentBroker()
    items = [rejected(with_headers), rejected(plain), rejected(read_by_aiokafka)]
    out = await ReadingPast(broker).exact_headers(items)  # type: ignore[arg-type]
    assert out == items and broker.fetches == 1, "only the record with headers read by librdkafka is fetched again"
