"""SASL/SSL settings reach aiokafka, and the SASL password is never shown (repr, str, logs)."""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stream_learner.config import Settings
from stream_learner.errors import ConfigError
from stream_learner.kafka.clients import make_consumer, make_producer, security_kwargs, unused_security_settings
from stream_learner.kafka.librdkafka.config import security_properties

from .conftest import BrokerInfo, StartService

PASSWORD = "pw-9f2c-do-not-log"


def settings(**overrides: object) -> Settings:
    return Settings(input_dim=4, **overrides)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate and its key (it serves as CA file and as client certificate)."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a test certificate")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=stream-learner-test-ca",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key


def test_plaintext_needs_nothing() -> None:
    assert security_kwargs(settings()) == {"security_protocol": "PLAINTEXT"}


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_plaintext_passes_the_mechanism_and_credentials(mechanism: str) -> None:
    s = settings(security_protocol="SASL_PLAINTEXT", sasl_mechanism=mechanism, sasl_username="alice", sasl_password=PASSWORD)
    assert security_kwargs(s) == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": mechanism,
        "sasl_plain_username": "alice",
        "sasl_plain_password": PASSWORD,
    }


@pytest.mark.parametrize("missing", ["sasl_username", "sasl_password"])
def test_sasl_without_credentials_is_a_config_error(missing: str) -> None:
    given = {"sasl_username": "alice", "sasl_password": PASSWORD}
    del given[missing]
    with pytest.raises(ConfigError, match="sasl_username and sasl_password"):
        security_kwargs(settings(security_protocol="SASL_SSL", **given))


def test_ssl_verifies_the_brokers_against_the_ca_file_and_presents_the_client_certificate(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    kwargs = security_kwargs(settings(security_protocol="SSL", ssl_cafile=cert, ssl_certfile=cert, ssl_keyfile=key))
    assert set(kwargs) == {"security_protocol", "ssl_context"} and kwargs["security_protocol"] == "SSL"
    context = kwargs["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    subjects = [dict(item[0] for item in ca["subject"]) for ca in context.get_ca_certs()]
    assert {"commonName": "stream-learner-test-ca"} in subjects


def test_sasl_ssl_has_both(certificate: tuple[Path, Path]) -> None:
    cert, _ = certificate
    s = settings(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512", sasl_username="alice", sasl_password=PASSWORD, ssl_cafile=cert)
    kwargs = security_kwargs(s)
    assert isinstance(kwargs.pop("ssl_context"), ssl.SSLContext)
    assert kwargs == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "alice",
        "sasl_plain_password": PASSWORD,
    }


def test_ssl_file_problems_are_config_errors(tmp_path: Path, certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    with pytest.raises(ConfigError, match="ssl_cafile .* is not a readable file"):
        security_kwargs(settings(security_protocol="SSL", ssl_cafile=tmp_path / "missing.pem"))
    with pytest.raises(ConfigError, match="without ssl_certfile"):
        security_kwargs(settings(security_protocol="SSL", ssl_keyfile=key))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match="TLS context"):
        security_kwargs(settings(security_protocol="SSL", ssl_cafile=garbage))
    with pytest.raises(ConfigError, match="TLS context"):
        security_kwargs(settings(security_protocol="SSL", ssl_certfile=cert, ssl_keyfile=garbage))


def test_settings_the_protocol_does_not_use_are_named() -> None:
    s = settings(sasl_username="alice", sasl_password=PASSWORD, ssl_cafile=Path("/ca.pem"))
    assert unused_security_settings(s) == ["sasl_username", "sasl_password", "ssl_cafile"]
    assert security_kwargs(s) == {"security_protocol": "PLAINTEXT"}
    assert unused_security_settings(settings(security_protocol="SASL_PLAINTEXT", sasl_username="a", sasl_password="b")) == []


async def test_the_service_kafka_clients_get_the_security_settings(certificate: tuple[Path, Path]) -> None:
    cert, _ = certificate
    s = settings(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-256", sasl_username="alice", sasl_password=PASSWORD, ssl_cafile=cert)
    consumer, producer = make_consumer(s), make_producer(s)
    for client in (consumer._client, producer.client):
        assert client._security_protocol == "SASL_SSL"
        assert client._sasl_mechanism == "SCRAM-SHA-256"
        assert (client._sasl_plain_username, client._sasl_plain_password) == ("alice", PASSWORD)
        assert isinstance(client._ssl_context, ssl.SSLContext)
    await consumer.stop()  # never started: just closed
    await producer.stop()


def test_librdkafka_gets_the_same_security_settings_one_to_one(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    s = settings(
        security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-256", sasl_username="alice", sasl_password=PASSWORD,
        ssl_cafile=cert, ssl_certfile=cert, ssl_keyfile=key,
    )  # fmt: skip
    assert security_properties(s) == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-256",
        "sasl.username": "alice",
        "sasl.password": PASSWORD,
        "ssl.ca.location": str(cert),
        "ssl.certificate.location": str(cert),
        "ssl.key.location": str(key),
    }
    assert security_properties(settings()) == {"security.protocol": "PLAINTEXT"}
    with pytest.raises(ConfigError, match="sasl_username and sasl_password"):
        security_properties(settings(security_protocol="SASL_PLAINTEXT", sasl_username="alice"))
    with pytest.raises(ConfigError, match="ssl_keyfile is set without ssl_certfile"):
        security_properties(settings(security_protocol="SSL", ssl_keyfile=key))


def test_the_password_is_not_in_repr_str_or_json_of_the_settings() -> None:
    s = settings(security_protocol="SASL_SSL", sasl_username="alice", sasl_password=PASSWORD)
    for shown in (repr(s), str(s), s.model_dump_json(), repr(s.model_dump()), repr(s.sasl_password)):
        assert PASSWORD not in shown
    assert s.sasl_password is not None and s.sasl_password.get_secret_value() == PASSWORD


def test_a_password_from_the_environment_is_not_in_the_settings_repr(tmp_path: Path) -> None:
    script = "from stream_learner.settings_loading import load_settings; s = load_settings(); print(repr(s)); print(s)"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STREAM_LEARNER_")}
    env = {**clean, "STREAM_LEARNER_INPUT_DIM": "4", "STREAM_LEARNER_SASL_PASSWORD": PASSWORD}
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, check=True, timeout=60)
    assert "sasl_password=SecretStr('**********')" in out.stdout
    assert PASSWORD not in out.stdout + out.stderr


@pytest.mark.integration
def test_the_service_start_log_holds_no_password(start_service: StartService) -> None:
    """A password set (unused under PLAINTEXT): the start line has the brokers and device only, no log line the password."""
    service = start_service(sasl_username="alice", sasl_password=PASSWORD)
    started = service.wait_for_log("service_started", timeout=60)
    assert started["bootstrap_servers"] and started["device"] == "cpu"
    assert set(started) - {"event", "level", "timestamp"} == {"bootstrap_servers", "device"}
    unused = next(e for e in service.log_events() if e.get("event") == "security_settings_unused")
    assert unused["settings"] == ["sasl_username", "sasl_password"] and unused["level"] == "warning"
    assert service.stop() == 0
    log_text = service.log_path.read_text()
    assert "service_stopped" in log_text and PASSWORD not in log_text


@pytest.mark.integration
@pytest.mark.parametrize("client", ["aiokafka", "librdkafka"])
def test_a_sasl_start_uses_the_credentials_and_logs_no_password(kafka_broker: BrokerInfo, tmp_path: Path, client: str) -> None:
    """SASL against the test broker's PLAINTEXT listener: the handshake is attempted and fails; no output shows the password."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STREAM_LEARNER_")}
    env = {
        **clean,
        "STREAM_LEARNER_BOOTSTRAP_SERVERS": kafka_broker.bootstrap_servers,
        "STREAM_LEARNER_INPUT_DIM": "4",
        "STREAM_LEARNER_CHECKPOINT_DIR": str(tmp_path / "checkpoints"),
        "STREAM_LEARNER_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "STREAM_LEARNER_SASL_USERNAME": "alice",
        "STREAM_LEARNER_SASL_PASSWORD": PASSWORD,
        "STREAM_LEARNER_KAFKA_CLIENT": client,
    }
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "stream_learner", "run"], env=env, capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "service_started" not in output and PASSWORD not in output
    if kafka_broker.kind == "tansu":
        said = {"aiokafka": "UnsupportedSaslMechanism", "librdkafka": "Unsupported SASL mechanism"}[client]
        assert said in output, "the broker must have seen a SASL handshake"
    assert time.monotonic() - started < 120
