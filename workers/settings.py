"""One settings object, parsed once at start, frozen, then handed to components.

Sources, highest first: keyword arguments, environment variables (`CONVEYOR_` prefix, `__`
between levels, e.g. `CONVEYOR_KAFKA__PARTITIONS=8`), the well-known `KAFKA_BOOTSTRAP` and
`REDIS_URL`, then a TOML file (`CONVEYOR_CONFIG`, default `conveyor.toml` when present; a
file named that does not exist is an error, an empty `CONVEYOR_CONFIG` reads no file).
Components never read the environment themselves.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from schemas import DecodeLimits
from workers.names import LANES


class _Group(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)


class KafkaSettings(_Group):
    bootstrap: str = "127.0.0.1:9092"
    """Comma-separated bootstrap servers."""
    topic_prefix: str = "conveyor"
    """Every topic name starts with this prefix and a dot."""
    tenant_topics: bool = False
    """Per-tenant topics: requests on `<prefix>.requests.<tenant>`, results on
    `<prefix>.results.<tenant>`. The tenant is the topic's (never the payload's) and
    `reply_to` is ignored, so broker ACLs decide who submits as and reads for a tenant."""
    partitions: int = Field(default=4, ge=1)
    """Partitions of each topic the workers create when it is missing."""
    replication_factor: int = Field(default=1, ge=1)
    """Replication factor of topics the workers create."""
    client_id: str = "conveyor"
    """Prefix of the client id each producer and consumer reports to the broker."""
    max_poll_records: int = Field(default=500, ge=1)
    """Most records taken from the consumer in one poll."""
    max_poll_interval_ms: int = Field(default=300_000, ge=1000)
    """The group evicts a consumer that does not poll within this interval."""
    session_timeout_ms: int = Field(default=10_000, ge=1000)
    """The group evicts a consumer whose heartbeats stop for this long."""
    linger_ms: int = Field(default=0, ge=0)
    """Producer batching delay. 0: stages already hand the producer whole batches (one
    record batch per partition per delivered batch), so waiting would only add latency."""
    compression_type: Literal["none", "gzip", "lz4", "zstd", "snappy"] | None = None
    """Producer compression; None sends uncompressed."""
    max_message_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    """Largest record the producer will send; larger tensors go by claim-check."""
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    """How every Kafka client (workers, client, admin) talks to the broker."""
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "SCRAM-SHA-512"
    """SASL mechanism under SASL_PLAINTEXT / SASL_SSL."""
    sasl_username: str | None = None
    """SASL user (required under SASL_*)."""
    sasl_password: SecretStr | None = None
    """SASL password; never logged or shown (prefer `sasl_password_file`)."""
    sasl_password_file: Path | None = None
    """File holding the SASL password (a mounted secret); trailing newlines are dropped."""
    ssl_cafile: Path | None = None
    """CA bundle that signed the broker's certificate (SSL / SASL_SSL); default: system CAs."""
    ssl_certfile: Path | None = None
    """Client certificate (PEM) for mutual TLS."""
    ssl_keyfile: Path | None = None
    """Private key (PEM) of `ssl_certfile`."""
    ssl_check_hostname: bool = True
    """Check that the broker's certificate names the host connected to."""

    @model_validator(mode="after")
    def _credentials_complete(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL_"):
            if not self.sasl_username:
                raise ValueError(f"sasl_username is required with {self.security_protocol}")
            if self.sasl_password is None and self.sasl_password_file is None:
                raise ValueError(
                    f"sasl_password or sasl_password_file is required with {self.security_protocol}"
                )
        if self.sasl_password is not None and self.sasl_password_file is not None:
            raise ValueError("set sasl_password or sasl_password_file, not both")
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("ssl_certfile and ssl_keyfile go together")
        return self

    def password(self) -> str | None:
        """The SASL password, read from its file when one is named."""
        return _secret(self.sasl_password, self.sasl_password_file)


class RedisSettings(_Group):
    url: str = "redis://127.0.0.1:6379/0"
    """Redis URL (redis:// or rediss://)."""
    key_prefix: str = "conveyor:"
    """Every Redis key starts with this prefix."""
    task_ttl_s: int = Field(default=7 * 24 * 3600, ge=1)
    """How long the ledger keeps a task after its last transition."""
    claim_ttl_s: int = Field(default=24 * 3600, ge=1)
    """How long a claim-checked tensor waits in Redis for the next stage to read it."""
    ledger_states: Literal["every", "final"] = "every"
    """What the ledger records of a task: `every` state it passes (PREPROCESSED and INFERRED
    too: `conveyor status` shows where a task is), or only its `final` one (DONE, FAILED,
    EXPIRED, REJECTED, with when it was accepted): two ledger writes per task fewer, and a
    redelivered frame is then run again (at least once) where the ledger would have skipped it."""
    username: str | None = None
    """Redis ACL user (Redis 6+); None: the default user."""
    password: SecretStr | None = None
    """Password of the ACL user; never logged or shown (prefer `password_file`). A password
    inside `url` works too but is not redacted from errors: keep it out of the URL."""
    password_file: Path | None = None
    """File holding the Redis password (a mounted secret); trailing newlines are dropped."""
    ssl_ca_certs: Path | None = None
    """CA bundle that signed the server's certificate (`rediss://`); default: system CAs."""
    ssl_certfile: Path | None = None
    """Client certificate (PEM) when the server asks for one."""
    ssl_keyfile: Path | None = None
    """Private key (PEM) of `ssl_certfile`."""
    ssl_check_hostname: bool = True
    """Check that the server's certificate names the host connected to."""

    @model_validator(mode="after")
    def _credentials_complete(self) -> RedisSettings:
        if self.password is not None and self.password_file is not None:
            raise ValueError("set password or password_file, not both")
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("ssl_certfile and ssl_keyfile go together")
        return self

    @property
    def tls(self) -> bool:
        return self.url.startswith("rediss://")

    def secret(self) -> str | None:
        """The Redis password, read from its file when one is named."""
        return _secret(self.password, self.password_file)


def _secret(value: SecretStr | None, path: Path | None) -> str | None:
    if value is not None:
        return value.get_secret_value()
    if path is not None:
        try:
            return path.read_text("utf-8").rstrip("\r\n")
        except OSError as exc:
            # The path is configuration, not a secret: naming it helps the operator.
            raise SettingsError(f"cannot read secret file {path}: {exc.strerror}") from None
    return None


class WorkerSettings(_Group):
    delivery: Literal["at_least_once", "exactly_once"] = "at_least_once"
    """at_least_once: outputs acknowledged, then offsets committed, the ledger absorbs
    replays. exactly_once: outputs and offsets in one Kafka transaction per batch."""
    instance_id: str | None = None
    """Stable name of this worker instance (e.g. the pod name); the transactional id is
    built from it, so a restarted instance fences its predecessor. Default: host and pid."""
    transaction_timeout_ms: int = Field(default=15_000, ge=1000)
    """An open transaction of a dead worker blocks read_committed readers at most this long."""
    max_attempts: int = Field(default=3, ge=1)
    """Tries of a record whose batch failed transiently (out of memory, timeout)."""
    max_in_flight: int = Field(default=4096, ge=1)
    """Records taken from Kafka and not yet finished; intake pauses at this bound."""
    batches_in_flight: int = Field(default=3, ge=1)
    """Batches a stage processes at once: one more than the inference worker's
    `runtime.concurrent_runs`, so the next batch is ready when a model thread frees."""
    lanes: tuple[str, ...] = ()
    """Lanes this worker serves; empty: every lane. Inference and postprocess workers serving
    the same lanes form one consumer group (a lane pool, `<prefix>.<stage>.<lane>+<lane>`
    unless every lane), so a deployment can give the top lane workers of its own, e.g. at a
    better CPU priority than the pool serving the others (`nice`). A preprocess pool needs
    `kafka.tenant_topics`: it reads the request topics of the tenants whose class is one of
    its lanes, followed as the registry changes (all preprocess pools share the group
    `<prefix>.preprocess`). Every lane must be served by some pool."""
    nice: int = Field(default=0, ge=0, le=19)
    """Nice value added to every thread of the worker at start (and so to every thread it
    starts later). For a pool serving only low lanes on cores it shares with a top-lane
    pool, e.g. 10: the kernel then gives the top lane's work a larger share of the cores;
    `sched_idle` gives it them whenever it wants them."""
    sched_idle: bool = False
    """Run the whole worker under Linux's SCHED_IDLE policy: it gets a core only when no
    other task wants it, and gives it up the moment one wakes, where a nice value only
    shrinks its share. For a pool serving only low lanes beside a top-lane pool on shared
    cores; it then has no share of its own against the other processes (within the worker the
    lanes' minimum shares still hold), so give it cores that are idle some of the time.
    Where the kernel groups tasks by session (autogroups), the worker also starts a session
    of its own at autogroup nice 19, so it is idle against a broker or Redis in other
    sessions too; a terminal's Ctrl-C then no longer reaches it (SIGTERM does)."""
    max_batch_size: int | None = Field(default=None, ge=1)
    """Override of the batch size (inference: the model config's; other stages: 256)."""
    max_wait_ms: float | None = Field(default=None, ge=0)
    """Override of the batching window from a batch's first item."""
    commit_interval_ms: int = Field(default=200, ge=10)
    """How often finished offsets are committed."""
    shutdown_grace_s: float = Field(default=20.0, gt=0)
    """On SIGTERM, in-flight work gets this long to finish before the worker exits anyway."""
    retry_backoff_ms: int = Field(default=200, ge=1)
    """First delay when Kafka or Redis refuses a write; doubles up to 5 s, forever."""
    claim_check_threshold_bytes: int = Field(default=1024 * 1024, ge=1024)
    """Tensors larger than this travel between stages through Redis, not Kafka."""
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"
    """The worker's event loop. uvloop (libuv) runs the same asyncio code with cheaper
    socket reads and writes and callbacks, a large part of what a stage does per frame
    besides its own work (+2-7 % tasks/s and a lower paced p50 on the 2-core framework
    benchmark, BENCHMARKS.md); asyncio: the standard library's, for a platform without
    uvloop or to rule it out."""
    gc_threshold: int = Field(default=50_000, ge=0)
    """Allocations between the cyclic garbage collector's young collections (CPython's own
    is 700); 0 keeps CPython's. Every task leaves decoded dicts, records and futures behind, and
    at 700 the collector ran so often that a MiniLM preprocess worker spent ~15 % of its CPU
    in it (py-spy, BENCHMARKS.md "Where each stage's CPU per MiniLM task goes"). What is built
    at start (models, clients, settings) is frozen out of the collections too."""

    @model_validator(mode="after")
    def _known_lanes(self) -> WorkerSettings:
        unknown = [lane for lane in self.lanes if lane not in LANES]
        if unknown:
            raise ValueError(f"lanes {unknown} are none of {', '.join(LANES)}")
        if len(set(self.lanes)) != len(self.lanes):
            raise ValueError(f"lanes {list(self.lanes)} name a lane twice")
        return self


class LimitsSettings(_Group):
    """Bounds on what one request may ask for, checked before any expensive step (decoding
    checks sizes before it allocates, preprocess checks texts before tokenizing and the
    tenant's pending tasks before admitting the request)."""

    max_message_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    """Largest encoded message a stage decodes; larger ones fail with PAYLOAD_TOO_LARGE
    before parsing."""
    max_tensors: int = Field(default=64, ge=1)
    """Most tensors in one message (PAYLOAD_TOO_LARGE)."""
    max_tensor_elements: int = Field(default=1 << 24, ge=1)
    """Most elements in one tensor, the product of its shape, checked before the tensor is
    built (PAYLOAD_TOO_LARGE)."""
    max_string_bytes: int = Field(default=1024 * 1024, ge=1)
    """Longest element of a BYTES tensor at decode time (PAYLOAD_TOO_LARGE)."""
    max_texts_per_request: int = Field(default=256, ge=1)
    """Texts one request may carry, checked before tokenizing (PAYLOAD_TOO_LARGE)."""
    max_text_bytes: int = Field(default=64 * 1024, ge=1)
    """Longest single text in UTF-8 bytes, checked before tokenizing (INPUT_TOO_LONG): a
    tokenizer reads the whole text even when it truncates the tokens."""
    max_pending_tasks_per_tenant: int = Field(default=100_000, ge=0)
    """Tasks of one tenant admitted by preprocess and not yet final; a request over it is
    REJECTED with QUOTA_EXCEEDED. 0: no cap."""
    pending_ttl_s: int = Field(default=3600, ge=1)
    """A pending task not seen final within this long stops counting (a lost task must not
    hold its tenant's quota forever)."""
    reply_topic_check_ttl_s: float = Field(default=30.0, ge=0)
    """How long preprocess trusts its check of a `reply_to` topic (exists, writable, not
    internal): a topic created or granted later is accepted after at most this long."""

    def decode_limits(self) -> DecodeLimits:
        return DecodeLimits(
            max_message_bytes=self.max_message_bytes,
            max_tensors=self.max_tensors,
            max_tensor_elements=self.max_tensor_elements,
            max_string_bytes=self.max_string_bytes,
        )


class LaneSettings(_Group):
    """Tenants, priority lanes and fair sharing (issue 5). Each tenant's policy (class,
    weight, rate quota, in-flight cap, default deadline) lives in Redis (`conveyor tenants
    set`); these are the defaults and the knobs of the scheduler."""

    unknown_tenants: Literal["default", "reject"] = "default"
    """A tenant with no policy in Redis: served with the defaults below, or REJECTED with
    UNKNOWN_TENANT."""
    default_class: Literal["realtime", "standard", "bulk"] = "standard"
    """The lane of a tenant with no policy of its own."""
    default_weight: float = Field(default=1.0, gt=0)
    """The weight of a tenant with no policy of its own."""
    over_quota: Literal["reject", "delay"] = "reject"
    """A task over its tenant's rate quota: REJECTED with QUOTA_EXCEEDED, or held in
    preprocess until the tenant's bucket has a token (at most `max_delay_ms`, then
    REJECTED). Over its cap on tasks in flight: REJECTED, or held until some finish
    (`cap_retry_ms`)."""
    max_delay_ms: int = Field(default=10_000, ge=0)
    """Longest a task is held for its tenant's rate quota in `delay` mode."""
    cap_retry_ms: int = Field(default=100, ge=1)
    """In `delay` mode a task over its tenant's cap on tasks in flight is held, not
    REJECTED, with no time limit (its deadline still applies): the held ones try again this
    often. A worker holds at most its partitions' share of `worker.max_in_flight`, then stops
    reading them, so the rest of a flood waits in Kafka (with per-tenant topics, in its own
    tenant's topic only) instead of in the lanes."""
    refresh_interval_s: float = Field(default=1.0, gt=0)
    """How often workers re-read the tenant registry: a change applies within this long."""
    min_share_standard: float = Field(default=0.1, ge=0, lt=1)
    """Share of served cost the standard lane gets while it has work, whatever the
    realtime lane asks (aging: no lane starves)."""
    min_share_bulk: float = Field(default=0.05, ge=0, lt=1)
    """Share of served cost the bulk lane gets while it has work."""
    low_lane_reserve: int = Field(default=256, ge=1)
    """Records a lower lane keeps queued in the worker while a higher lane has work; its
    partitions pause beyond that, so its backlog waits in Kafka, not in front of the
    higher lane."""

    latency_budget_ms: float = Field(default=10.0, ge=0)
    """While the realtime lane has work, batches are capped at the rows the model runs in
    about this long (a running estimate per batch key), so a realtime task waits for at most
    about one such batch; 0: batches are bounded by their window only."""
    express_batches: int = Field(default=1, ge=0)
    """Batches of the realtime lane a stage may start beyond `worker.batches_in_flight`,
    so realtime work never waits for a batch slot behind lower lanes' batches."""
    realtime_active_s: float = Field(default=1.0, gt=0)
    """How long after the last realtime record the latency budget stays on."""
    partitions_per_tenant: int = Field(default=2, ge=1)
    """Partitions of each lane topic one tenant's tasks spread over (their records are keyed
    by tenant): more let more replicas serve one tenant, fewer keep tenants apart, which is
    what lets a worker read a tenant faster when its weight says so."""

    def min_shares(self) -> dict[str, float]:
        return {"realtime": 0.0, "standard": self.min_share_standard, "bulk": self.min_share_bulk}


class RuntimeSettings(_Group):
    providers: tuple[str, ...] = (
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    )
    """ONNX Runtime execution providers in order of preference; missing ones are skipped."""
    intra_op_threads: int = Field(default=0, ge=0)
    """Threads inside one model run; 0: the worker's cores shared out among
    `concurrent_runs` (at least 1 each). On a CPU a run of one thread per core is the one
    whose priority is exact (`compute_nice`), and on 2 cores two single-threaded runs at once
    made 251-269 MiniLM seq/s against 187-220 for one run on both (batch 32; BENCHMARKS.md,
    Pipeline (b))."""
    inter_op_threads: int = Field(default=1, ge=0)
    """Threads across operators."""
    graph_optimization: Literal["disable", "basic", "extended", "all"] = "all"
    """ONNX Runtime graph optimization level."""
    precision: Literal["auto", "fp32", "fp16"] = "auto"
    """Which file of a version to serve when it has a float16 variant (`model.fp16.onnx`,
    `conveyor models build --precision fp16`). auto: fp16 where the first provider is CUDA
    or TensorRT, fp32 on the CPU (where float16 runs slower); fp16: wherever the variant
    exists; fp32: never the variant."""
    device_id: int = Field(default=0, ge=0)
    """The GPU a worker's CUDA and TensorRT sessions run on (`conveyor serve` sets
    CUDA_VISIBLE_DEVICES per process instead, where every worker's device is its 0)."""
    io_binding: bool = False
    """Bind inputs and outputs through I/O binding on device providers (CUDA, TensorRT).
    Off by default: with pooling inside the graph the output is small, and on an H200 plain
    `run()` measured 1-8% faster (BENCHMARKS.md, GPU section)."""
    allow_spinning: bool = False
    """Let ONNX Runtime's intra-op threads busy-wait between operators and runs. ORT's own
    default is on, which buys a little latency on cores of its own; off by default because
    the workers share cores with the broker and each other, and a spinning pool takes their
    CPU while a realtime task crosses the other stages (BENCHMARKS.md, lanes)."""
    cuda_wait: Literal["auto", "spin", "yield", "block"] = "block"
    """How a model thread waits for the GPU at the end of each run (CUDA and TensorRT): block
    sleeps until the device signals; auto, CUDA's default, spins a core through the wait in
    a process of one CUDA context; yield spins but gives the core up to other threads
    (workers/models/cuda_wait.py). Block by default: workers share a host's cores with each
    other, the broker and Redis. On the lent H100 host with 14 fused workers at 10 % load it
    took 2.53 ms of the workers' CPU a task against 2.94 with auto (p99 30 against 51 ms; one
    20 s run each), saturated it made no difference (BENCHMARKS.md, One GPU host). No effect
    on the CPU provider."""
    compute_nice: int = Field(default=10, ge=0, le=19)
    """Nice value added to the general model threads and the loader (ONNX Runtime's pool,
    with `intra_op_threads` > 1, inherits it); express threads keep the worker's own. A bulk
    model run is the one long CPU-bound job in the system: at a lower CPU priority it takes
    what the realtime run, the stages' I/O loops, the broker and Redis leave, so on shared
    cores a realtime task waits less for bulk compute anywhere in the pipeline. On cores of
    its own it changes nothing; 0 leaves the priority alone."""
    concurrent_runs: int = Field(default=2, ge=1)
    """General model threads: batches of any lane run on this many at once, highest lane
    first. Two keep the model busy while one run's inputs and outputs are handled, and on a
    CPU they share the cores (`intra_op_threads`)."""
    express_runs: int = Field(default=1, ge=0)
    """Model threads beyond `concurrent_runs` that run only batches of the top lane, at the
    worker's own CPU priority: a realtime batch starts at once beside the bulk runs in
    progress, and the kernel gives it the cores first (`compute_nice`)."""
    inline_run_max_ms: float = Field(default=0.5, ge=0)
    """On the CPU provider, a run expected to take at most this long (the model's recent
    time per row times the batch's rows) runs on the event loop instead of a model thread:
    for a model that fast the hand-off to a thread and back costs more CPU than the run
    (BENCHMARKS.md, Pipeline). 0: every run on a model thread."""

    def threads_per_run(self, cores: int) -> int:
        """`intra_op_threads`, or the cores shared out among the general runs."""
        return self.intra_op_threads or max(1, cores // self.concurrent_runs)


class ModelSettings(_Group):
    poll_interval_s: float = Field(default=2.0, ge=0)
    """How often inference workers look for new version folders; 0 turns polling off (then
    only `conveyor models load|unload|rollback` changes what serves)."""
    canary_fraction: float = Field(default=0.0, ge=0, le=1)
    """Share of unpinned tasks a newly found version takes as a canary (by task-id hash);
    0 promotes a new version to all traffic at once."""
    shadow_fraction: float = Field(default=0.1, ge=0, le=1)
    """Share of batches a shadow version also runs on when the command names no share."""
    memory_budget_bytes: int = Field(default=0, ge=0)
    """Most model memory (estimated) loaded at once; a swap that would exceed it unloads the
    old version first, pausing intake briefly. 0: no budget."""
    memory_overhead_ratio: float = Field(default=1.5, gt=0)
    """Estimated session memory per byte of model file (weights plus runtime buffers)."""
    swap_pause_max_s: float = Field(default=10.0, gt=0)
    """Longest a budget swap waits for the old version's running batches before giving up."""
    warmup: bool = True
    """Run a real batch (the last one served, else one made from the signature) through a new
    version before it takes traffic; a version that fails it never serves."""
    warmup_rows: int = Field(default=8, ge=1)
    """Rows in the warm-up batch."""


DEFAULT_METRICS_PORT = 9400
"""The workers' /metrics, /livez and /readyz port when `observability.metrics_port` is unset."""


class ObservabilitySettings(_Group):
    metrics_host: str = "0.0.0.0"
    """Interface of the worker's HTTP endpoint (/metrics, /livez, /readyz)."""
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    """Port of that endpoint. Unset: `DEFAULT_METRICS_PORT` (9400), or a free port when
    another process holds it (the second worker on a host), logged in one line and announced
    in Redis like any endpoint. Set: exactly this port, and a worker whose port is taken
    exits at once with code 5; 0 takes a free port."""
    tenant_label_cap: int = Field(default=50, ge=1)
    """Tenants named in metric labels; the rest are counted as `other`."""
    stuck_after_s: float = Field(default=30.0, gt=0)
    """/livez fails when the worker's loop has not turned for this long."""
    otel_enabled: bool = False
    """OpenTelemetry spans per task and stage and per batch (needs the `otel` extra)."""
    otel_exporter: Literal["otlp", "console"] = "otlp"
    """Where spans go: OTLP over HTTP, or the worker's stdout."""
    otel_endpoint: str = "http://127.0.0.1:4318/v1/traces"
    """The OTLP/HTTP traces endpoint (a collector, Jaeger, Tempo ...)."""


class GatewaySettings(_Group):
    """The Open Inference Protocol (KServe V2) gateway, `conveyor gateway`: HTTP and gRPC in
    front of the pipeline for callers who do not speak Kafka."""

    event_loop: Literal["uvloop", "asyncio"] = "uvloop"
    """The gateway's event loop, as `worker.event_loop`: aiohttp and gRPC's asyncio server
    run on either."""
    gc_threshold: int = Field(default=50_000, ge=0)
    """Allocations between the cyclic garbage collector's young collections, as
    `worker.gc_threshold` (0: CPython's 700). Every request leaves parsed bodies, messages and
    futures behind: at 700 the collector took ~8 % of the gateway's CPU at saturation
    (py-spy, BENCHMARKS.md Gateway)."""
    http_host: str = "0.0.0.0"
    """Interface of the HTTP listener (V2 REST, /metrics)."""
    http_port: int = Field(default=8000, ge=0, le=65535)
    """V2 REST port; 0 takes a free port (logged). Also `conveyor gateway --http-port`."""
    grpc_port: int = Field(default=8001, ge=0, le=65535)
    """V2 gRPC port (`inference.GRPCInferenceService`); 0 takes a free port."""
    instance_id: str | None = None
    """Names this gateway's reply topic `<prefix>.gateway.<instance_id>`, where its one
    results consumer reads the answers to the requests it published. Give each replica a
    stable name (a StatefulSet pod name); default: the host name. With `processes` > 1 the
    processes are `<instance_id>-0`, `<instance_id>-1`, ..."""
    processes: int = Field(default=1, ge=1, le=256)
    """Gateway processes behind the same ports (also `conveyor gateway --processes`). One
    process answers ~3,000-4,000 requests a second on a core of its own (BENCHMARKS.md,
    Gateway); more share the listening ports (SO_REUSEPORT: the kernel spreads connections
    among them), each with its own reply topic, and /metrics of any of them counts them all.
    A supervisor starts them and starts again one that exits."""
    reuse_port: bool = False
    """Bind the listeners with SO_REUSEPORT, so that several gateway processes on one host
    share the ports (set for each process when `processes` > 1)."""
    auth: Literal["api_key", "header", "none"] = "api_key"
    """How a caller's tenant is known: `api_key` (an `Authorization: Bearer KEY` or
    `x-api-key` header, or gRPC metadata, looked up in Redis: `conveyor keys add`),
    `header` (the `conveyor-tenant` header, trusted: only behind a proxy that sets it), or
    `none` (every caller is `default_tenant`)."""
    default_tenant: str = "default"
    """The tenant of every caller when `auth` is `none`."""
    keys_refresh_s: float = Field(default=5.0, gt=0)
    """How often the API keys are re-read from Redis (a revoked key stops within this long;
    a new key works at once)."""
    request_timeout_s: float = Field(default=30.0, gt=0)
    """Longest a synchronous request waits for its result before 504 / DEADLINE_EXCEEDED
    (with the task id, to look it up later); a caller's own shorter timeout wins."""
    max_in_flight: int = Field(default=10_000, ge=1)
    """Requests this process holds at once (waiting for a broker acknowledgement or a
    result); one more is answered 429 at once, before anything is published."""
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    """Largest request body (HTTP) or message (gRPC); larger ones are answered 413."""
    result_ttl_s: int = Field(default=3600, ge=1)
    """How long the result of an asynchronous (or timed-out) request is kept in Redis for
    `GET /v2/tasks/{id}`."""
    callback_url_prefixes: tuple[str, ...] = ()
    """URL prefixes an asynchronous request's callback may start with (e.g.
    `https://hooks.internal/`); empty: callbacks are refused (400). The gateway POSTs the
    result there, so the list keeps it from calling arbitrary hosts."""
    callback_timeout_s: float = Field(default=10.0, gt=0)
    """Time for one callback POST; it is tried 3 times in all."""
    tls_certfile: Path | None = None
    """Server certificate (PEM, chain first) for HTTPS and gRPC over TLS; None: plaintext
    (TLS ends in front of the gateway: an ingress or a mesh)."""
    tls_keyfile: Path | None = None
    """Private key (PEM) of `tls_certfile`."""

    @model_validator(mode="after")
    def _tls_complete(self) -> GatewaySettings:
        if (self.tls_certfile is None) != (self.tls_keyfile is None):
            raise ValueError("tls_certfile and tls_keyfile go together")
        return self


class StackSettings(_Group):
    state_dir: Path = Path(".stack")
    """Data, logs and PID files of the native stack."""
    cache_dir: Path = Path.home() / ".cache" / "conveyor"
    """Downloaded Kafka jars."""
    kafka_port: int = Field(default=9092, ge=1, le=65535)
    """Loopback port of the Kafka broker."""
    kafka_controller_port: int = Field(default=9093, ge=1, le=65535)
    """Loopback port of the KRaft controller."""
    redis_port: int = Field(default=6379, ge=1, le=65535)
    """Loopback port of Redis."""
    install_missing: bool = True
    """Install redis-server with apt-get when it is missing and we are root."""
    secure: bool = False
    """Start Kafka with SASL/SCRAM-SHA-512 and ACLs and Redis with TLS and an ACL user
    (credentials and a self-signed CA under `<state_dir>/secrets`); also `stack up --secure`."""
    kafka_jit: Literal["auto", "quick", "full"] = "auto"
    """The broker JVM's compilers. `quick`: the client compiler only (`-XX:TieredStopAtLevel=1`):
    on 2 cores the optimizing compiler's threads took ~1 CPU s in every 12 s of a fresh
    broker's first minutes, beside the workers; with `quick` the pipeline's saturated bursts
    ran 9-16 % faster, while a steady 200 requests a second cost ~10 % more CPU a task once
    `full` had compiled its paths (BENCHMARKS.md, Pipeline). `full`: both, as Kafka's own
    scripts (long-lived brokers, cores to spare). `auto`: `quick` up to 4 cores, else `full`."""


class Settings(BaseSettings):
    """Everything a Conveyor process can be told."""

    model_config = SettingsConfigDict(
        env_prefix="CONVEYOR_",
        env_nested_delimiter="__",
        frozen=True,
        extra="forbid",
        use_attribute_docstrings=True,
    )

    kafka: KafkaSettings = KafkaSettings()
    """The broker and topics."""
    redis: RedisSettings = RedisSettings()
    """The ledger, tenant registry and claim-check store."""
    stack: StackSettings = StackSettings()
    """The native local stack (`conveyor stack up`)."""
    worker: WorkerSettings = WorkerSettings()
    """Intake, batching, commits and shutdown of a stage worker."""
    limits: LimitsSettings = LimitsSettings()
    """Bounds on message sizes, texts and pending tasks per tenant."""
    lanes: LaneSettings = LaneSettings()
    """Tenant registry defaults, rate quotas, priority lanes and fair sharing."""
    runtime: RuntimeSettings = RuntimeSettings()
    """ONNX Runtime."""
    models: ModelSettings = ModelSettings()
    """Model lifecycle: hot swaps, canary and shadow versions, memory budget."""
    observability: ObservabilitySettings = ObservabilitySettings()
    """Metrics and health endpoint."""
    gateway: GatewaySettings = GatewaySettings()
    """The KServe V2 HTTP/gRPC gateway (`conveyor gateway`)."""
    model_repository: Path = Path("model_repository")
    """Folder of models and pipelines (`<model>/config.json`, `<model>/<version>/model.onnx`)."""
    log_level: str = "INFO"
    """Python logging level."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        named = os.environ.get("CONVEYOR_CONFIG")
        sources = (init_settings, env_settings, _WellKnownEnv(settings_cls))
        if named == "":  # set and empty: no file at all
            return sources
        config_file = Path(named or "conveyor.toml")
        if named is not None and not config_file.is_file():  # a typo must not go unnoticed
            raise SettingsError(f"CONVEYOR_CONFIG names {config_file}, which is not a file")
        return (*sources, TomlConfigSettingsSource(settings_cls, toml_file=config_file))


class _WellKnownEnv(PydanticBaseSettingsSource):
    """KAFKA_BOOTSTRAP and REDIS_URL, the names every tool in this field already uses."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        if bootstrap := os.environ.get("KAFKA_BOOTSTRAP"):
            found["kafka"] = {"bootstrap": bootstrap}
        if url := os.environ.get("REDIS_URL"):
            found["redis"] = {"url": url}
        return found


class SettingsError(ValueError):
    """Settings that do not parse; the message names each bad field and value."""


def load_settings(**overrides: Any) -> Settings:
    """Parse the settings once; errors name the field and the bad value (secrets redacted)."""
    try:
        return Settings(**overrides)
    except tomllib.TOMLDecodeError as exc:
        config_file = os.environ.get("CONVEYOR_CONFIG", "conveyor.toml")
        raise SettingsError(f"config file {config_file} is not valid TOML: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']} "
            f"(got {_redacted(err.get('input'), err['loc'])!r})"
            for err in exc.errors()
        )
        # `from None`: pydantic's own error repeats the raw input, secrets included.
        raise SettingsError(f"invalid settings: {problems}") from None


_REDACTED = "**********"


def _redacted(value: Any, loc: tuple[int | str, ...] = ()) -> Any:
    """`value` with every password field masked, however deep."""
    if loc and "password" in str(loc[-1]) and "file" not in str(loc[-1]):
        return _REDACTED
    if isinstance(value, dict):
        return {k: _redacted(v, (*loc, k)) for k, v in value.items()}
    if isinstance(value, SecretStr):
        return _REDACTED
    return value
