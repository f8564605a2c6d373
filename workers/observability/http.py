"""A worker's HTTP endpoint: /metrics (Prometheus), /livez and /readyz (orchestrator probes).

Served from a daemon thread so a busy event loop never delays a scrape; the loop's own
liveness is judged from a heartbeat it stamps, not from whether this thread answers.
"""

from __future__ import annotations

import errno
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from workers.component import Component
from workers.exits import PortTakenError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Health:
    live: bool
    ready: bool
    detail: dict[str, Any] = field(default_factory=dict)


class ObservabilityServer(Component):
    """Serves metrics and health on `host:port` (port 0 picks a free one).

    A taken port raises `PortTakenError`, or with `fallback_to_free` (the port is only the
    default, not what the operator asked for) the server takes a free port and says so.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        health: Callable[[], Health],
        host: str,
        port: int,
        *,
        fallback_to_free: bool = False,
    ) -> None:
        self._registry = registry
        self._health = health
        self._address = (host, port)
        self._fallback_to_free = fallback_to_free
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("server is not started")
        return int(self._server.server_address[1])

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("server already started")
        registry, health = self._registry, self._health

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.startswith("/metrics"):
                    self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
                elif self.path in ("/livez", "/readyz"):
                    state = health()
                    ok = state.live if self.path == "/livez" else state.ready
                    body = json.dumps({"live": state.live, "ready": state.ready, **state.detail})
                    self._send(200 if ok else 503, body.encode(), "application/json")
                else:
                    self._send(404, b"not found\n", "text/plain")

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # scrapes every few seconds would drown the worker's log

        host, port = self._address
        try:
            self._server = ThreadingHTTPServer(self._address, Handler)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            if not self._fallback_to_free:
                raise PortTakenError(
                    f"metrics port {port} on {host} is taken by another process: set "
                    "observability.metrics_port (CONVEYOR_OBSERVABILITY__METRICS_PORT) to a "
                    "free port, 0 for any, or unset it"
                ) from None
            self._server = ThreadingHTTPServer((host, 0), Handler)
            log.warning(
                "metrics port %d is taken (another worker on this host?): /metrics, /livez "
                "and /readyz on http://%s:%d instead, announced in Redis (conveyor top)",
                port,
                host,
                self.port,
            )
        else:
            log.info("metrics and health on http://%s:%d", host, self.port)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="observability-http", daemon=True
        )
        self._thread.start()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def check(base_url: str, timeout_s: float = 3.0) -> tuple[int, str]:
    """`conveyor check`: 0 live and ready, 1 live but not ready, 2 not live or unreachable."""
    import urllib.error
    import urllib.request

    def probe(path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(base_url.rstrip("/") + path, timeout=timeout_s) as r:
                return int(r.status), r.read().decode()
        except urllib.error.HTTPError as error:
            return int(error.code), error.read().decode()

    try:
        live, body = probe("/livez")
        if live != 200:
            return 2, body
        ready, body = probe("/readyz")
        return (0 if ready == 200 else 1), body
    except OSError as exc:
        return 2, f"unreachable: {exc}"
