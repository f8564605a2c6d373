"""Which partition of a lane topic a task's record goes to: near its tenant's other records.

Records between stages are keyed by tenant and one of `partitions_per_tenant` slots, not by
task id. A tenant's work then sits in a few partitions of each lane, and a worker bounds what
it buffers per partition (`stages.flow`): a tenant served faster has its partitions read
faster. Keyed by task id, every partition would carry every tenant in arrival order, and no
scheduler behind it could serve one tenant more than it arrives. More slots spread a heavy
tenant over more worker replicas; fewer keep tenants apart.
"""

from __future__ import annotations

import zlib


def lane_record_key(tenant: str, task_id: str, partitions_per_tenant: int) -> bytes:
    slot = zlib.crc32(task_id.encode("utf-8")) % max(1, partitions_per_tenant)
    return f"{tenant}/{slot}".encode()
