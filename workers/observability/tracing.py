"""W3C trace context across stages: one trace id from request to result, a span per stage.

Each stage forwards `traceparent` with the same trace id and a fresh span id of its own, so
a tracing backend sees the stages as consecutive spans of the client's trace. A request
without trace context starts a new trace at preprocess.
"""

from __future__ import annotations

import re
import secrets

_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


def new_traceparent() -> str:
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


def child_of(traceparent: str | None) -> str:
    """The context a stage forwards: same trace, new span; a new trace when none is valid."""
    match = _TRACEPARENT.match(traceparent or "")
    if match is None or match.group(1) == "0" * 32:
        return new_traceparent()
    return f"00-{match.group(1)}-{secrets.token_hex(8)}-{match.group(3)}"


def trace_id(traceparent: str | None) -> str | None:
    match = _TRACEPARENT.match(traceparent or "")
    return match.group(1) if match else None
