"""One raw Fetch request for one partition, sent to its leader through an aiokafka client.

aiokafka's consumer decodes what it fetches before handing it out; this returns the partition's
part of the response as the broker sent it (records undecoded, high watermark, last stable
offset, aborted transactions), for :mod:`.batch_format` to parse on its own terms.

Guarantees:
- The request is aiokafka's own ``FetchRequest`` at the version aiokafka negotiates with the
  broker (v4+ for ``read_committed``); a partition's error code raises aiokafka's error for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from aiokafka import AIOKafkaClient, TopicPartition
from aiokafka.errors import LeaderNotAvailableError, UnknownTopicOrPartitionError, for_code
from aiokafka.protocol.fetch import FetchRequest

__all__ = ["DEFAULT_FETCH_BYTES", "FetchedPartition", "fetch_partition"]

DEFAULT_FETCH_BYTES: Final = 1024 * 1024
_READ_UNCOMMITTED, _READ_COMMITTED = 0, 1


@dataclass(frozen=True, slots=True)
class FetchedPartition:
    """One partition's part of a Fetch response (its error code was 0)."""

    records: bytes
    """Whole batches from the one holding the fetch offset, perhaps a partial one last."""
    high_watermark: int
    """-1 where the broker left the partition out of its answer."""
    last_stable_offset: int | None
    """``None`` below Fetch v4."""
    aborted_transactions: tuple[tuple[int, int], ...]
    """``(producer_id, first_offset)`` of aborted transactions in the fetched range (read_committed, Fetch v4+)."""
    api_version: int
    """The Fetch version aiokafka negotiated with the broker."""


async def fetch_partition(
    client: AIOKafkaClient,
    tp: TopicPartition,
    offset: int,
    *,
    read_committed: bool,
    max_bytes: int = DEFAULT_FETCH_BYTES,
    max_wait_ms: int = 100,
) -> FetchedPartition:
    """The raw records of ``tp`` from ``offset`` on, fetched from its leader in one Fetch request.

    ``max_bytes`` bounds the response and the partition. ``max_wait_ms`` is how long the broker
    may wait for data at the end of the log (some brokers answer a 0 with no partition at all).
    Raises aiokafka's error type for the partition's error code, and aiokafka's errors for a
    request that fails.
    """
    leader = await _leader(client, tp)
    isolation = _READ_COMMITTED if read_committed else _READ_UNCOMMITTED
    # private API: aiokafka has no public raw Fetch; its consumer decodes (and may raise on) every batch it fetches.
    request = FetchRequest(max_wait_ms, 1, max_bytes, isolation, [(tp.topic, [(tp.partition, offset, max_bytes)])])
    response = await client.send(leader, request)
    version = int(response.API_VERSION)
    for topic, partitions in response.topics:
        for partition, error_code, high_watermark, *rest in partitions:
            if (topic, partition) != (tp.topic, tp.partition):
                continue
            if error_code:
                raise for_code(error_code)(f"fetching {tp.topic}[{tp.partition}]@{offset} from node {leader}")
            return _fetched(version, high_watermark, rest)
    return FetchedPartition(b"", -1, None, (), version)


def _fetched(version: int, high_watermark: int, rest: list[Any]) -> FetchedPartition:
    """A partition's fields of a Fetch response at ``version``, those after its high watermark being ``rest``.

    Between the high watermark and the records: v4 [lso, aborted], v5-v10 [lso, log_start_offset,
    aborted], v11 [lso, log_start_offset, aborted, preferred_replica].
    """
    aborted = (rest[2] if version >= 5 else rest[1]) if version >= 4 else None
    return FetchedPartition(
        records=bytes(rest[-1] or b""),
        high_watermark=high_watermark,
        last_stable_offset=rest[0] if version >= 4 else None,
        aborted_transactions=tuple((int(p), int(o)) for p, o in aborted or ()),
        api_version=version,
    )


async def _leader(client: AIOKafkaClient, tp: TopicPartition) -> int:
    leader = client.cluster.leader_for_partition(tp)
    if leader is None:
        # The client does not follow this topic (a producer's client follows only what it sent to).
        leader = (await client.fetch_all_metadata()).leader_for_partition(tp)
    if leader is None:
        raise UnknownTopicOrPartitionError(f"{tp.topic}[{tp.partition}] is not in the cluster metadata")
    if leader < 0:
        raise LeaderNotAvailableError(f"{tp.topic}[{tp.partition}] has no leader")
    return int(leader)
