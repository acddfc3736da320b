"""librdkafka client properties from the settings, one to one with the aiokafka clients' (kafka/clients.py).

The SASL password stays a ``SecretStr`` until :func:`security_properties` hands it to librdkafka;
these dicts are never logged.
"""

from __future__ import annotations

import logging
from typing import Any

from stream_learner.config import Settings
from stream_learner.kafka.clients import (
    MAX_BATCH_BYTES,
    MAX_REQUEST_BYTES,
    PARTITION_FETCH_BYTES,
    SecuritySettings,
    check_security,
)

LOGGER = logging.getLogger("librdkafka")
"""librdkafka's own log lines (connection errors, retries) go through the standard library's logging."""


def security_properties(settings: SecuritySettings) -> dict[str, Any]:
    """``security.protocol`` and the SASL and TLS properties it uses (checked as for aiokafka).

    TLS verifies the brokers' certificates and host names (librdkafka's defaults), against
    ``ssl_cafile`` where set, else the system CAs.
    """
    check_security(settings)
    protocol = settings.security_protocol
    props: dict[str, Any] = {"security.protocol": protocol}
    if protocol in ("SSL", "SASL_SSL"):
        files = {"ssl.ca.location": "ssl_cafile", "ssl.certificate.location": "ssl_certfile"}
        files["ssl.key.location"] = "ssl_keyfile"
        props.update({prop: str(getattr(settings, name)) for prop, name in files.items() if getattr(settings, name)})
    if protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
        assert settings.sasl_password is not None  # check_security
        props["sasl.mechanism"] = settings.sasl_mechanism
        props["sasl.username"] = settings.sasl_username
        props["sasl.password"] = settings.sasl_password.get_secret_value()
    return props


def common_properties(settings: Settings) -> dict[str, Any]:
    return {
        **security_properties(settings),
        "bootstrap.servers": settings.bootstrap_servers,
        "client.id": settings.client_id,
        "logger": LOGGER,
    }


def consumer_properties(settings: Settings) -> dict[str, Any]:
    """A group consumer with manual offsets (the checkpoint decides), from the earliest record it has no
    offset for, reading committed records only (upstream producers may be transactional). Its assignor
    is aiokafka's default (roundrobin), so members on either client form one group: KAFKA_CLIENT can be
    switched one instance at a time."""
    return {
        **common_properties(settings),
        "group.id": settings.reading_group,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "partition.assignment.strategy": "roundrobin",
        "isolation.level": "read_committed",
        "session.timeout.ms": settings.session_timeout_ms,
        "heartbeat.interval.ms": max(settings.session_timeout_ms // 3, 100),
        "max.partition.fetch.bytes": PARTITION_FETCH_BYTES,
        "fetch.max.bytes": 4 * MAX_REQUEST_BYTES,
        "fetch.wait.max.ms": 10,
    }


def producer_properties(settings: Settings) -> dict[str, Any]:
    """Waits for every replica's acknowledgement; partitions keys as the Java client and aiokafka do
    (murmur2), so both clients put a key on the same partition; reports failed deliveries only."""
    props = {
        **common_properties(settings),
        "acks": "all",
        "linger.ms": 2,
        "batch.size": MAX_BATCH_BYTES,
        "message.max.bytes": MAX_REQUEST_BYTES,
        "delivery.timeout.ms": int(settings.delivery_timeout_s * 1000),
        "partitioner": "murmur2_random",
        "delivery.report.only.error": True,
    }
    if settings.delivery == "exactly_once":
        props["transactional.id"] = settings.effective_transactional_id
        # librdkafka requires a record's delivery timeout within its transaction's; the broker aborts an
        # open transaction after this long (a restart's fencing ends it sooner).
        props["transaction.timeout.ms"] = max(60_000, props["delivery.timeout.ms"])
    return props
