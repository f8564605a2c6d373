"""What the native stack needs to run secured: passwords, a self-signed CA and server
certificate, the broker's SASL/ACL settings and Redis's ACL user and TLS options.

Everything is made once under `<state_dir>/secrets` (files mode 0600) and reused on the next
`up`, so a restarted broker or Redis keeps its credentials. For tests and development only:
the CA's key sits next to its certificate.
"""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

KAFKA_MECHANISM = "SCRAM-SHA-512"
ADMIN_USER = "admin"
"""Kafka super user: the workers' and tools' identity on the test stack."""
GUEST_USER = "guest"
"""A Kafka user with no ACLs: everything it tries is refused (the authorizer is on)."""
TENANT_USERS = ("tenant-a", "tenant-b")
"""Kafka users with no ACLs of their own: tests grant them a tenant's (per-tenant topics)."""
REDIS_USER = "conveyor"
"""Redis ACL user; Redis's `default` user is switched off."""


@dataclass(frozen=True)
class SecureAccess:
    """Where a client finds what it needs to reach the secured stack."""

    directory: Path

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def server_cert(self) -> Path:
        return self.directory / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.directory / "server.key"

    def password_file(self, user: str) -> Path:
        return self.directory / f"{user}.password"

    def password(self, user: str) -> str:
        return self.password_file(user).read_text().strip()


def client_exports(kafka_bootstrap: str, redis_url: str, access: SecureAccess) -> list[str]:
    """Shell lines a worker or client runs to reach the secured stack, as the admin user:
    the broker's address and every security setting (paths to secrets, never secrets).
    `CONVEYOR_*` variables win over `KAFKA_BOOTSTRAP` / `REDIS_URL` set elsewhere."""
    values = [
        ("KAFKA__BOOTSTRAP", kafka_bootstrap),
        ("KAFKA__SECURITY_PROTOCOL", "SASL_PLAINTEXT"),
        ("KAFKA__SASL_MECHANISM", KAFKA_MECHANISM),
        ("KAFKA__SASL_USERNAME", ADMIN_USER),
        ("KAFKA__SASL_PASSWORD_FILE", str(access.password_file(ADMIN_USER))),
        ("REDIS__URL", redis_url),
        ("REDIS__USERNAME", REDIS_USER),
        ("REDIS__PASSWORD_FILE", str(access.password_file(REDIS_USER))),
        ("REDIS__SSL_CA_CERTS", str(access.ca_file)),
    ]
    return [f"export CONVEYOR_{name}={shlex.quote(value)}" for name, value in values]


def prepare(directory: Path) -> SecureAccess:
    """Make passwords and certificates that are missing; idempotent."""
    access = SecureAccess(directory)
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    for user in (ADMIN_USER, GUEST_USER, *TENANT_USERS, REDIS_USER):
        path = access.password_file(user)
        if not path.exists():
            _write_private(path, secrets.token_urlsafe(24))
    if not access.server_cert.exists():
        _make_certificates(access)
    return access


def kafka_overrides(access: SecureAccess, kafka_port: int, controller_port: int) -> str:
    """Lines appended to server.properties (later keys win): a SASL_PLAINTEXT listener with
    SCRAM and the KRaft authorizer. The controller listener stays PLAINTEXT on loopback, so
    its principal (ANONYMOUS) is a super user, as Kafka's KRaft documentation does."""
    password = access.password(ADMIN_USER)
    return f"""
# ---- secured mode (workers/stack/secure.py) ----
listeners=SASL_PLAINTEXT://127.0.0.1:{kafka_port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=SASL_PLAINTEXT://127.0.0.1:{kafka_port}
inter.broker.listener.name=SASL_PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT
sasl.enabled.mechanisms={KAFKA_MECHANISM}
sasl.mechanism.inter.broker.protocol={KAFKA_MECHANISM}
listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=\
org.apache.kafka.common.security.scram.ScramLoginModule required \
username="{ADMIN_USER}" password="{password}";
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:{ADMIN_USER};User:ANONYMOUS
allow.everyone.if.no.acl.found=false
"""


def scram_arguments(access: SecureAccess) -> list[str]:
    """`kafka-storage format` arguments that create the SCRAM users with the metadata."""
    return [
        f"--add-scram={KAFKA_MECHANISM}=[name={user},password={access.password(user)}]"
        for user in (ADMIN_USER, GUEST_USER, *TENANT_USERS)
    ]


def redis_config(access: SecureAccess, port: int) -> Path:
    """A config file (mode 0600: it holds the ACL password) for TLS only, one ACL user."""
    path = access.directory / "redis.conf"
    _write_private(
        path,
        "\n".join(
            [
                "port 0",
                f"tls-port {port}",
                f"tls-cert-file {access.server_cert}",
                f"tls-key-file {access.server_key}",
                f"tls-ca-cert-file {access.ca_file}",
                "tls-auth-clients no",
                "user default off",
                f"user {REDIS_USER} on >{access.password(REDIS_USER)} ~* &* +@all",
                "",
            ]
        ),
    )
    return path


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _make_certificates(access: SecureAccess) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        from workers.stack.native import StackError

        raise StackError("`openssl` is not on PATH: the secured stack makes its certificates")
    d = access.directory
    ca_key = d / "ca.key"
    csr = d / "server.csr"
    extensions = d / "server.ext"
    extensions.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    steps = [
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
         "-subj", "/CN=conveyor-test-ca", "-keyout", str(ca_key), "-out", str(access.ca_file)],
        [openssl, "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
         "-keyout", str(access.server_key), "-out", str(csr)],
        [openssl, "x509", "-req", "-in", str(csr), "-CA", str(access.ca_file),
         "-CAkey", str(ca_key), "-CAcreateserial", "-days", "30",
         "-extfile", str(extensions), "-out", str(access.server_cert)],
    ]  # fmt: skip
    for step in steps:
        result = subprocess.run(step, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            from workers.stack.native import StackError

            raise StackError(f"making test certificates failed: {result.stderr[-1000:]}")
    for key in (ca_key, access.server_key):
        os.chmod(key, 0o600)
