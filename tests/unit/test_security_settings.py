"""Security settings: complete or refused, passed to every client from one helper, and
secrets kept out of reprs and error messages."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from pydantic import SecretStr

from workers.kafka.clients import connection_options
from workers.ledger.connection import redis_client, redis_options
from workers.settings import KafkaSettings, RedisSettings, SettingsError, load_settings

SECRET = "s3cr3t-hunter2"


def test_settings_never_show_passwords(tmp_path: Path) -> None:
    settings = load_settings(
        kafka={
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_username": "worker",
            "sasl_password": SECRET,
        },
        redis={"username": "worker", "password": SECRET},
    )
    for text in (repr(settings), str(settings), settings.model_dump_json()):
        assert SECRET not in text
    assert settings.kafka.password() == SECRET
    assert settings.redis.secret() == SECRET


def test_errors_in_settings_never_show_passwords() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(
            kafka={"security_protocol": "SASL_SSL", "sasl_password": SECRET},  # no username
            redis={"password": SECRET, "password_file": "/x", "task_ttl_s": 0},
        )
    message = str(caught.value)
    assert "sasl_username is required" in message
    assert "task_ttl_s" in message
    assert SECRET not in message
    assert SECRET not in repr(caught.value)


def test_sasl_needs_user_and_one_password() -> None:
    with pytest.raises(ValueError, match="sasl_password or sasl_password_file"):
        KafkaSettings(security_protocol="SASL_PLAINTEXT", sasl_username="u")
    with pytest.raises(ValueError, match="not both"):
        KafkaSettings(sasl_password=SecretStr(SECRET), sasl_password_file=Path("/x"))
    with pytest.raises(ValueError, match="go together"):
        KafkaSettings(security_protocol="SSL", ssl_certfile=Path("/c"))


def test_password_files_are_read_when_connecting(tmp_path: Path) -> None:
    secret_file = tmp_path / "password"
    secret_file.write_text(SECRET + "\n")
    kafka = KafkaSettings(
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-256",
        sasl_username="worker",
        sasl_password_file=secret_file,
    )
    options = connection_options(kafka)
    assert options["sasl_plain_password"] == SECRET
    assert options["sasl_mechanism"] == "SCRAM-SHA-256"
    assert options["security_protocol"] == "SASL_PLAINTEXT"
    assert "ssl_context" not in options
    missing = KafkaSettings(sasl_password_file=tmp_path / "absent")
    with pytest.raises(SettingsError, match="absent") as caught:
        missing.password()
    assert SECRET not in str(caught.value)


def test_tls_gets_a_context_with_the_ca() -> None:
    options = connection_options(KafkaSettings(security_protocol="SSL", ssl_check_hostname=False))
    context = options["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.check_hostname is False
    assert options["security_protocol"] == "SSL"
    assert connection_options("h:1") == {"bootstrap_servers": "h:1"}


def test_redis_options_carry_user_password_and_tls(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    plain = RedisSettings(username="worker", password=SecretStr(SECRET))
    assert redis_options(plain) == {"username": "worker", "password": SECRET}
    secured = RedisSettings(url="rediss://127.0.0.1:6380/0", ssl_ca_certs=ca)
    assert redis_options(secured) == {"ssl_check_hostname": True, "ssl_ca_certs": str(ca)}
    client = redis_client(RedisSettings(username="worker", password=SecretStr(SECRET)))
    assert SECRET not in repr(client)
    assert SECRET not in repr(client.connection_pool)
