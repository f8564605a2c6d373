"""Start and stop a real single-node Kafka (KRaft) and Redis as local processes.

Kafka comes from jars fetched from Maven Central by `ops/stack/pom.xml` into a cache folder;
Redis is Debian's `redis-server`. Everything listens on loopback only; data, logs and PID
files live under `StackConfig.state_dir`. `up()` is idempotent and `down()` stops by PID.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from workers.cores import available_cores
from workers.stack import probes, secure

OPS_STACK_DIR = Path(__file__).resolve().parents[2] / "ops" / "stack"


class StackError(RuntimeError):
    """The stack cannot start; the message says what to install or fix."""


def _pinned_kafka_version(pom: Path) -> str:
    match = re.search(r"<kafka.version>([^<]+)</kafka.version>", pom.read_text())
    if match is None:
        raise StackError(f"{pom} does not pin <kafka.version>")
    return match.group(1)


@dataclass(frozen=True)
class StackConfig:
    """Where the stack lives and which loopback ports it takes."""

    state_dir: Path = Path(".stack")
    """Data, logs and PID files."""
    cache_dir: Path = Path.home() / ".cache" / "conveyor"
    """Downloaded Kafka jars, shared by every state dir."""
    kafka_port: int = 9092
    kafka_controller_port: int = 9093
    redis_port: int = 6379
    kafka_heap_mb: int = 768
    install_missing: bool = True
    """Install redis-server with apt-get when it is missing and we are root."""
    ready_timeout_s: float = 90.0
    ops_dir: Path = field(default=OPS_STACK_DIR)
    secure: bool = False
    """Kafka with SASL/SCRAM and ACLs, Redis with TLS and an ACL user (`workers.stack.secure`).
    Use a state dir of its own: a broker's users are made when its storage is formatted."""
    kafka_jit: Literal["auto", "quick", "full"] = "auto"
    """`quick` (the JVM's client compiler only), `full` (tiered, as Kafka's scripts) or `auto`
    (`quick` up to 4 cores): `stack.kafka_jit`."""

    @property
    def kafka_quick_jit(self) -> bool:
        if self.kafka_jit == "auto":
            return available_cores() <= 4
        return self.kafka_jit == "quick"

    @property
    def kafka_bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    @property
    def redis_url(self) -> str:
        scheme = "rediss" if self.secure else "redis"
        return f"{scheme}://127.0.0.1:{self.redis_port}/0"

    @property
    def secrets_dir(self) -> Path:
        return self.state_dir.resolve() / "secrets"


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    pid: int | None
    ready: bool
    endpoint: str

    def line(self) -> str:
        state = "ready" if self.ready else ("starting/unhealthy" if self.pid else "stopped")
        pid = f"pid {self.pid}" if self.pid else "no pid"
        return f"{self.name:<6} {state:<18} {pid:<12} {self.endpoint}"


def _pid_alive(pid: int, marker: str) -> bool:
    """Alive and really ours: a recycled PID running something else does not count."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return marker.encode() in cmdline and not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except (OSError, IndexError):
        return True


def _stop_pid(pid: int, marker: str, timeout_s: float) -> None:
    if not _pid_alive(pid, marker):
        return
    os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _pid_alive(pid, marker):
            return
        time.sleep(0.1)
    os.killpg(pid, signal.SIGKILL)
    while _pid_alive(pid, marker):
        time.sleep(0.05)


class _Service:
    """One supervised process: a PID file, a start command and a readiness check."""

    def __init__(self, name: str, marker: str, directory: Path) -> None:
        self.name = name
        self.marker = marker
        self.directory = directory
        self.pid_file = directory / f"{name}.pid"

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _pid_alive(pid, self.marker) else None

    def spawn(self, argv: list[str], log_name: str, env: dict[str, str] | None = None) -> int:
        self.directory.mkdir(parents=True, exist_ok=True)
        with (self.directory / log_name).open("ab") as log:
            # A session of its own: the stack outlives the CLI and is stopped as a group.
            proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=env,
                cwd=self.directory,
            )
        self.pid_file.write_text(str(proc.pid))
        return proc.pid

    def stop(self, timeout_s: float) -> None:
        pid = self.pid()
        if pid is not None:
            _stop_pid(pid, self.marker, timeout_s)
        self.pid_file.unlink(missing_ok=True)


class NativeStack:
    """A Kafka broker and a Redis server run as local processes."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        state = config.state_dir.resolve()
        self._kafka = _Service("kafka", "kafka.Kafka", state / "kafka")
        self._redis = _Service("redis", "redis-server", state / "redis")
        self.kafka_version = _pinned_kafka_version(config.ops_dir / "pom.xml")

    def access(self) -> secure.SecureAccess | None:
        """Credentials and CA of a secured stack (made on first use); None when plain."""
        return secure.prepare(self.config.secrets_dir) if self.config.secure else None

    def _kafka_client_options(self) -> dict[str, Any]:
        access = self.access()
        if access is None:
            return {}
        return {
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": secure.KAFKA_MECHANISM,
            "sasl_plain_username": secure.ADMIN_USER,
            "sasl_plain_password": access.password(secure.ADMIN_USER),
        }

    def _redis_client_options(self) -> dict[str, Any]:
        access = self.access()
        if access is None:
            return {}
        return {
            "ssl_ca_certs": str(access.ca_file),
            "username": secure.REDIS_USER,
            "password": access.password(secure.REDIS_USER),
        }

    def _kafka_ready(self) -> bool:
        return probes.kafka_ready(self.config.kafka_bootstrap, options=self._kafka_client_options())

    def _redis_ready(self) -> bool:
        return probes.redis_ready(self.config.redis_url, options=self._redis_client_options())

    # ---- public API -------------------------------------------------------------------

    def up(self) -> list[ServiceStatus]:
        """Start what is not running and wait until both answer. Harmless when already up."""
        self.up_redis()
        self.up_kafka()
        return self.status()

    def down(self) -> None:
        self._kafka.stop(timeout_s=30)
        self._redis.stop(timeout_s=10)

    def status(self) -> list[ServiceStatus]:
        c = self.config
        return [
            ServiceStatus("kafka", self._kafka.pid(), self._kafka_ready(), c.kafka_bootstrap),
            ServiceStatus("redis", self._redis.pid(), self._redis_ready(), c.redis_url),
        ]

    def restart_kafka(self) -> None:
        """Controlled shutdown then start on the same data: what a broker upgrade does."""
        self._kafka.stop(timeout_s=30)
        self.up_kafka()

    def restart_redis(self) -> None:
        self._redis.stop(timeout_s=10)
        self.up_redis()

    # ---- Redis ------------------------------------------------------------------------

    def up_redis(self) -> None:
        c = self.config
        if self._redis.pid() is None:
            self._refuse_foreign_port("redis", c.redis_port)
            server = self._redis_server_binary()
            data = self._redis.directory
            data.mkdir(parents=True, exist_ok=True)
            access = self.access()
            # Secured: a config file with TLS on the port (plain port off) and the ACL user.
            listen = (
                [str(secure.redis_config(access, c.redis_port))]
                if access is not None
                else ["--port", str(c.redis_port)]
            )
            self._redis.spawn(
                [
                    server,
                    *listen,
                    "--bind",
                    "127.0.0.1",
                    "--dir",
                    str(data),
                    "--daemonize",
                    "no",
                    "--appendonly",
                    "yes",
                    "--appendfsync",
                    "everysec",
                    "--save",
                    "",
                    "--protected-mode",
                    "yes",
                ],
                "redis.log",
            )
        if not probes.wait_until(self._redis_ready, c.ready_timeout_s):
            raise StackError(
                f"redis did not answer PING on {c.redis_url}; see {self._redis.directory}/redis.log"
            )

    def _redis_server_binary(self) -> str:
        found = shutil.which("redis-server")
        if found:
            return found
        apt = shutil.which("apt-get")
        if self.config.install_missing and apt and os.geteuid() == 0:
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            install = [apt, "install", "-y", "--no-install-recommends", "redis-server"]
            if subprocess.run(install, env=env, capture_output=True, check=False).returncode != 0:
                subprocess.run([apt, "update"], env=env, capture_output=True, check=False)
                subprocess.run(install, env=env, capture_output=True, check=True)
            # Debian starts its own service on 6379; ours runs under the launcher, so stop it.
            subprocess.run(["service", "redis-server", "stop"], capture_output=True, check=False)
            found = shutil.which("redis-server")
            if found:
                return found
        raise StackError(
            "redis-server is missing: install it with `sudo apt-get install -y redis-server` "
            "(or set REDIS_URL to a running Redis)"
        )

    # ---- Kafka ------------------------------------------------------------------------

    def up_kafka(self) -> None:
        c = self.config
        if self._kafka.pid() is None:
            self._refuse_foreign_port("kafka", c.kafka_port)
            java = self._require(
                "java", "a Java 17+ runtime (`sudo apt-get install -y openjdk-17-jre-headless`)"
            )
            lib = self.kafka_jars()
            properties = self._write_kafka_config()
            self._format_storage(java, lib, properties)
            self._kafka.spawn(
                [java, *self._jvm_options(), "-cp", f"{lib}/*", "kafka.Kafka", str(properties)],
                "kafka.out",
            )
        if not probes.wait_until(self._kafka_ready, c.ready_timeout_s, 0.5):
            raise StackError(
                f"kafka did not answer metadata on {c.kafka_bootstrap} "
                f"within {c.ready_timeout_s}s; "
                f"see {self._kafka.directory}/logs/server.log"
            )

    def kafka_jars(self) -> Path:
        """The broker's classpath folder, downloaded once from Maven Central."""
        lib = self.config.cache_dir / f"kafka-{self.kafka_version}" / "lib"
        if (lib / ".complete").exists():
            return lib
        mvn = self._require("mvn", "Maven (`sudo apt-get install -y maven`)")
        staging = lib.with_name(f"lib.{os.getpid()}.tmp")
        shutil.rmtree(staging, ignore_errors=True)
        result = subprocess.run(
            [
                mvn,
                "-q",
                "-B",
                "-f",
                str(self.config.ops_dir / "pom.xml"),
                f"-DoutputDirectory={staging}",
                "dependency:copy-dependencies",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise StackError(
                f"fetching Kafka {self.kafka_version} jars failed:\n{result.stdout[-2000:]}"
            )
        (staging / ".complete").touch()
        shutil.rmtree(lib, ignore_errors=True)
        staging.rename(lib)
        return lib

    def _jvm_options(self) -> list[str]:
        logs = self._kafka.directory / "logs"
        # The heap starts at its full size, as Kafka's own scripts start it: one that starts
        # small grows under load through extra young collections, each a pause for every client.
        # On a few cores the optimizing compiler's threads compete with the workers for
        # minutes after a start and rarely pay that back in a developer's broker.
        quick = ["-XX:TieredStopAtLevel=1"] if self.config.kafka_quick_jit else []
        return [
            f"-Xms{self.config.kafka_heap_mb}m",
            f"-Xmx{self.config.kafka_heap_mb}m",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            *quick,
            "-Djava.awt.headless=true",
            f"-Dkafka.logs.dir={logs}",
            f"-Dlog4j2.configurationFile={self.config.ops_dir / 'log4j2.properties'}",
        ]

    def _write_kafka_config(self) -> Path:
        c = self.config
        data = self._kafka.directory / "data"
        template = (c.ops_dir / "server.properties").read_text()
        text = template.format(
            kafka_port=c.kafka_port, controller_port=c.kafka_controller_port, log_dirs=data
        )
        access = self.access()
        if access is not None:
            text += secure.kafka_overrides(access, c.kafka_port, c.kafka_controller_port)
        path = self._kafka.directory / "server.properties"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def _format_storage(self, java: str, lib: Path, properties: Path) -> None:
        if (self._kafka.directory / "data" / "meta.properties").exists():
            return
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        result = subprocess.run(
            [
                java,
                "-cp",
                f"{lib}/*",
                *self._jvm_options(),
                "kafka.tools.StorageTool",
                "format",
                # One argument: an id may start with "-", which argparse would take for a flag.
                f"--cluster-id={cluster_id}",
                "-c",
                str(properties),
                *(secure.scram_arguments(access) if (access := self.access()) else []),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise StackError(f"formatting Kafka storage failed:\n{result.stdout}{result.stderr}")

    # ---- shared -----------------------------------------------------------------------

    @staticmethod
    def _require(binary: str, what: str) -> str:
        found = shutil.which(binary)
        if found is None:
            raise StackError(f"`{binary}` is not on PATH: the native stack needs {what}")
        return found

    @staticmethod
    def _refuse_foreign_port(name: str, port: int) -> None:
        if probes.port_open("127.0.0.1", port):
            raise StackError(
                f"port {port} is taken by a process this launcher did not start; stop it or choose "
                f"another port for {name} (CONVEYOR_STACK__{name.upper()}_PORT)"
            )
