"""aiokafka clients built from the settings (with SASL/SSL), and telling a refusing broker from an absent one.

The service owns offsets: auto-commit is off, reading resumes where the
checkpoint says, and Kafka's committed offsets only follow durable checkpoints.
The SASL password stays a ``SecretStr`` until :func:`security_kwargs` hands it to
aiokafka; nothing here logs it.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any, Protocol

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.conn import create_conn
from aiokafka.errors import KafkaError
from aiokafka.helpers import create_ssl_context
from pydantic import SecretStr

from stream_learner.config import Settings
from stream_learner.errors import ConfigError

log = structlog.get_logger(__name__)

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
    check_security(settings)
    protocol = settings.security_protocol
    kwargs: dict[str, Any] = {"security_protocol": protocol}
    if protocol in ("SSL", "SASL_SSL"):
        try:
            kwargs["ssl_context"] = create_ssl_context(
                cafile=settings.ssl_cafile, certfile=settings.ssl_certfile, keyfile=settings.ssl_keyfile
            )
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise ConfigError(f"cannot build the TLS context from the ssl_* settings: {exc}") from exc
    if protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
        assert settings.sasl_password is not None  # check_security
        kwargs["sasl_mechanism"] = settings.sasl_mechanism
        kwargs["sasl_plain_username"] = settings.sasl_username
        kwargs["sasl_plain_password"] = settings.sasl_password.get_secret_value()
    return kwargs


def check_security(settings: SecuritySettings) -> None:
    """Raise :class:`ConfigError` on security settings that cannot work (either client): SASL without
    credentials, a key without a certificate, a file that is missing."""
    protocol = settings.security_protocol
    if protocol in ("SSL", "SASL_SSL"):
        if settings.ssl_keyfile is not None and settings.ssl_certfile is None:
            raise ConfigError("ssl_keyfile is set without ssl_certfile: mutual TLS needs the client certificate too")
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            path = getattr(settings, name)
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"{name} {str(path)!r} is not a readable file")
    if protocol in ("SASL_PLAINTEXT", "SASL_SSL") and (not settings.sasl_username or settings.sasl_password is None):
        raise ConfigError(f"security_protocol {protocol} needs sasl_username and sasl_password")


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
        group_id=settings.reading_group,
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
    """A producer that batches for throughput and waits for every replica's acknowledgement (at least
    once: exactly_once runs on librdkafka)."""
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
    )


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
            # private API: one connection with the client's security settings tells a refusal from no
            # answer (start() reports both alike).
            conn = await asyncio.wait_for(
                create_conn(host.strip("[]"), int(port), client_id=settings.client_id, **kwargs), timeout_s
            )
        except ssl.SSLError as exc:
            return exc
        except KafkaError as exc:
            if not exc.retriable:
                refused: Exception = exc
                return refused
            continue
        except (TimeoutError, OSError):
            continue
        conn.close()
    return None
