"""aiokafka adapters: client construction (with SASL/SSL), record conversion, dead letters, rebalance hooks.

The service owns offsets: auto-commit is off, reading resumes where the
checkpoint says, and Kafka's committed offsets only follow durable checkpoints.
The SASL password stays a ``SecretStr`` until :func:`security_kwargs` hands it to
aiokafka; nothing here logs it.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.conn import create_conn
from aiokafka.errors import KafkaError
from aiokafka.helpers import create_ssl_context
from pydantic import SecretStr

from stream_learner.config import Settings
from stream_learner.errors import ConfigError
from stream_learner.kernels.record_batch import PackedRecordBatch, PackedRecords, packs_batches
from stream_learner.records import Rejected

log = structlog.get_logger(__name__)

DLQ_REASON = "dlq.reason"
DLQ_DETAIL = "dlq.detail"
DLQ_TOPIC = "dlq.source.topic"
DLQ_PARTITION = "dlq.source.partition"
DLQ_OFFSET = "dlq.source.offset"
MAX_REQUEST_BYTES = 16 * 1024 * 1024
MAX_BATCH_BYTES = 256 * 1024
"""The producer's record batch size (``max_batch_size``), for batches it builds and batches built here."""
PARTITION_FETCH_BYTES = 1024 * 1024


class SecuritySettings(Protocol):
    """The connection-security part of :class:`~stream_learner.config.Settings`."""

    @property
    def security_protocol(self) -> str: ...
    @property
    def sasl_mechanism(self) -> str: ...
    @property
    def sasl_username(self) -> str | None: ...
    @property
    def sasl_password(self) -> SecretStr | None: ...
    @property
    def ssl_cafile(self) -> Path | None: ...
    @property
    def ssl_certfile(self) -> Path | None: ...
    @property
    def ssl_keyfile(self) -> Path | None: ...


def security_kwargs(settings: SecuritySettings) -> dict[str, Any]:
    """The aiokafka keyword arguments for ``settings.security_protocol`` (consumer, producer, admin alike).

    SSL and SASL_SSL get an :class:`ssl.SSLContext` that verifies the brokers (against
    ``ssl_cafile``, else the system CAs) and presents ``ssl_certfile``/``ssl_keyfile`` for
    mutual TLS. SASL_* need ``sasl_username`` and ``sasl_password``; the password is
    unwrapped here and nowhere else. Settings that the protocol does not use are ignored
    (see :func:`unused_security_settings`). Raises :class:`ConfigError` on settings that
    cannot work: SASL without credentials, a key without a certificate, a file that is missing.
    """
    protocol = settings.security_protocol
    kwargs: dict[str, Any] = {"security_protocol": protocol}
    if protocol in ("SSL", "SASL_SSL"):
        if settings.ssl_keyfile is not None and settings.ssl_certfile is None:
            raise ConfigError("ssl_keyfile is set without ssl_certfile: mutual TLS needs the client certificate too")
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            path = getattr(settings, name)
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"{name} {str(path)!r} is not a readable file")
        try:
            kwargs["ssl_context"] = create_ssl_context(
                cafile=settings.ssl_cafile, certfile=settings.ssl_certfile, keyfile=settings.ssl_keyfile
            )
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise ConfigError(f"cannot build the TLS context from the ssl_* settings: {exc}") from exc
    if protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
        if not settings.sasl_username or settings.sasl_password is None:
            raise ConfigError(f"security_protocol {protocol} needs sasl_username and sasl_password")
        kwargs["sasl_mechanism"] = settings.sasl_mechanism
        kwargs["sasl_plain_username"] = settings.sasl_username
        kwargs["sasl_plain_password"] = settings.sasl_password.get_secret_value()
    return kwargs


def unused_security_settings(settings: SecuritySettings) -> list[str]:
    """Names of security settings that are set but that ``security_protocol`` does not use."""
    protocol = settings.security_protocol
    unused = []
    if not protocol.startswith("SASL_"):
        unused += [n for n in ("sasl_username", "sasl_password") if getattr(settings, n) is not None]
    if protocol not in ("SSL", "SASL_SSL"):
        unused += [n for n in ("ssl_cafile", "ssl_certfile", "ssl_keyfile") if getattr(settings, n) is not None]
    return unused


def make_consumer(settings: Settings) -> AIOKafkaConsumer:
    """A group consumer with manual offsets, starting from the earliest record it has no offset for,
    reading committed records only (``read_committed``)."""
    unused = unused_security_settings(settings)
    if unused:
        log.warning("security_settings_unused", security_protocol=settings.security_protocol, settings=unused)
    return AIOKafkaConsumer(
        **security_kwargs(settings),
        bootstrap_servers=settings.bootstrap_servers,
        group_id=settings.group_id,
        client_id=settings.client_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        # A small share per partition: aiokafka hands out one partition's fetched result before the
        # next (Service._fetch evens that out per turn), and with 16 MiB per partition one result
        # held a whole catch-up's worth of one partition. A larger record still comes whole:
        # brokers return a partition's first batch regardless.
        max_partition_fetch_bytes=PARTITION_FETCH_BYTES,
        fetch_max_bytes=4 * MAX_REQUEST_BYTES,
        fetch_max_wait_ms=10,
        # Upstream producers may be transactional: what they aborted is neither predicted nor trained on.
        isolation_level="read_committed",
        session_timeout_ms=settings.session_timeout_ms,
        heartbeat_interval_ms=max(settings.session_timeout_ms // 3, 100),
    )


def make_producer(settings: Settings) -> AIOKafkaProducer:
    """A producer that batches for throughput and waits for every replica's acknowledgement.

    With ``delivery=exactly_once`` it is transactional (idempotent, ``effective_transactional_id``).
    """
    transactional = settings.delivery == "exactly_once"
    return AIOKafkaProducer(
        **security_kwargs(settings),
        bootstrap_servers=settings.bootstrap_servers,
        client_id=settings.client_id,
        acks="all",
        # aiokafka retries a send until its batch is this old (each produce request may wait as long):
        # the one bound on how long a broker may be away before a delivery fails.
        request_timeout_ms=int(settings.delivery_timeout_s * 1000),
        linger_ms=2,
        max_batch_size=MAX_BATCH_BYTES,
        max_request_size=MAX_REQUEST_BYTES,
        transactional_id=settings.effective_transactional_id if transactional else None,
        enable_idempotence=transactional,
    )


SMALL_GROUP = 16
"""Fewer records than this of one partition go through ``send`` instead of a record batch of their own."""


async def send_partitioned(
    producer: AIOKafkaProducer,
    topic: str,
    records: PackedRecords,
    partitions: np.ndarray | None,
    source_partition_count: int | None,
) -> list[asyncio.Future[Any]]:
    """Produce ``records`` as one record batch per partition; returns one delivery future per batch.

    Record ``i`` goes to partition ``partitions[i]`` (the events partition it came from) when
    ``topic`` has ``source_partition_count`` partitions, i.e. is co-partitioned with the source:
    for a keyed source record that is the partition the default partitioner would choose, and
    per-key order is kept, without hashing every key in Python. Otherwise (or with no
    ``partitions``) the producer's own partitioner picks, once per key. Records of one
    partition keep their order; a partition's group of fewer than ``SMALL_GROUP`` records is
    appended to the producer's open batch record by record instead. Larger groups are written
    by :class:`PackedRecordBatch` where the producer takes it, else by aiokafka's builder.
    """
    known = producer.client.cluster.partitions_for_topic(topic)
    if not known:
        known = await producer.partitions_for(topic)
    if partitions is None or source_partition_count != len(known) or len(partitions) != len(records):
        all_partitions = sorted(known)
        available = list(producer.client.cluster.available_partitions_for_topic(topic)) or all_partitions
        partitioner = producer._partitioner
        keys = (records.key(i) for i in range(len(records)))
        partitions = np.fromiter((partitioner(k, all_partitions, available) for k in keys), np.int64, len(records))
    futures = []
    packs = packs_batches(producer)
    order = np.argsort(partitions, kind="stable")
    bounds = np.flatnonzero(np.diff(partitions[order])) + 1
    for group in np.split(order, bounds):
        if not len(group):
            continue
        partition = int(partitions[group[0]])
        if len(group) < SMALL_GROUP:
            # A few records: into the partition's open batch in the accumulator, like send() does.
            # A record batch of their own would cost a produce round trip each (send_batch waits
            # for the partition's previous batch to leave): MAX_BATCH_SIZE 1 halved throughput.
            for i in group.tolist():
                futures.append(await producer.send(topic, records.value(i), key=records.key(i), partition=partition))
        elif packs:
            for rows in records.split(group, MAX_BATCH_BYTES):
                futures.append(await producer.send_batch(PackedRecordBatch(records, rows), topic, partition=partition))
        else:
            futures += await _send_built(producer, topic, records, group.tolist(), partition)
    return futures


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


def dead_letter_headers(rejected: Rejected) -> list[tuple[str, bytes]]:
    """The record's own headers, then the reason and the record's source position."""
    r = rejected.record
    return [
        *r.headers,
        (DLQ_REASON, rejected.reason.encode()),
        (DLQ_DETAIL, rejected.detail.encode()[:1000]),
        (DLQ_TOPIC, r.topic.encode()),
        (DLQ_PARTITION, str(r.partition).encode()),
        (DLQ_OFFSET, str(r.offset).encode()),
    ]


class RebalanceHooks(ConsumerRebalanceListener):  # type: ignore[misc]
    """Forwards aiokafka's rebalance callbacks to the service (checkpoint on revoke, seek on assign)."""

    def __init__(
        self,
        on_revoked: Callable[[Iterable[TopicPartition]], Awaitable[None]],
        on_assigned: Callable[[Iterable[TopicPartition]], Awaitable[None]],
    ) -> None:
        self._on_revoked = on_revoked
        self._on_assigned = on_assigned

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        await self._on_assigned(assigned)


def known_position(consumer: AIOKafkaConsumer, tp: TopicPartition) -> int | None:
    """The consumer's position on ``tp`` if it already has one, without waiting (None otherwise).

    ``AIOKafkaConsumer.position`` waits until the fetcher has resolved the position,
    which can stall the run loop; this reads the same state without waiting.
    """
    try:
        assignment = consumer._subscription.subscription.assignment
        state = assignment.state_value(tp)
        return int(state.position) if state is not None and state.has_valid_position else None
    except AttributeError:
        return None


OffsetReset = Callable[[TopicPartition, int], None]
_FETCHER_LOG = "aiokafka.consumer.fetcher"


class _OffsetResetWatch(logging.Filter):
    """Turns aiokafka's "fetch offset out of range, resetting" (INFO, where nobody sees it) into a call.

    Records below ``threshold`` are dropped here as before: the logger's level is lowered only so
    that this one message reaches the filter.
    """

    def __init__(self) -> None:
        super().__init__()
        self.callback: OffsetReset | None = None
        self.threshold = logging.WARNING

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if str(record.msg).startswith("Fetch offset %s is out of range") and isinstance(args, tuple) and len(args) == 2:
            if self.callback is not None and isinstance(args[1], TopicPartition):
                self.callback(args[1], int(args[0]))
            return False
        return record.levelno >= self.threshold


_offset_reset_watch = _OffsetResetWatch()


def watch_offset_resets(callback: OffsetReset) -> None:
    """Call ``callback(tp, offset)`` whenever a consumer finds its position on ``tp`` below the log start
    (the records were deleted, by retention, before they were read) and resets it. Replaces the last callback."""
    logger = logging.getLogger(_FETCHER_LOG)
    if _offset_reset_watch not in logger.filters:
        _offset_reset_watch.threshold = logger.getEffectiveLevel()
        logger.addFilter(_offset_reset_watch)
        logger.setLevel(min(logging.INFO, _offset_reset_watch.threshold))
    _offset_reset_watch.callback = callback


async def refusal(settings: Settings, timeout_s: float = 10.0) -> Exception | None:
    """Why the brokers refuse this client, where one answers and refuses (a SASL mechanism or credentials
    it rejects, a certificate that does not verify); None where none answers at all (wait for it).

    aiokafka's start reports either as the same "Unable to bootstrap"; this connects once to each
    bootstrap server with the client's security settings to tell them apart.
    """
    kwargs = security_kwargs(settings)
    for server in settings.bootstrap_servers.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            conn = await asyncio.wait_for(
                create_conn(host.strip("[]"), int(port), client_id=settings.client_id, **kwargs), timeout_s
            )
        except ssl.SSLError as exc:
            return exc
        except KafkaError as exc:
            if not exc.retriable:
                return exc
            continue
        except (TimeoutError, OSError):
            continue
        conn.close()
    return None
