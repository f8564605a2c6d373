"""Task ids: random version-4 UUIDs in hex, unique, and never shared by a forked child."""

from __future__ import annotations

import os
import uuid

from schemas.messages import new_task_id


def test_task_ids_are_uuid4_hex_and_unique() -> None:
    ids = [new_task_id() for _ in range(20_000)]  # many pool refills
    assert len(set(ids)) == len(ids)
    for task_id in ids[:2_000]:
        parsed = uuid.UUID(hex=task_id)
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
        assert parsed.hex == task_id


def test_a_forked_child_draws_ids_of_its_own() -> None:
    new_task_id()  # the parent's pool holds bytes the child must not reuse
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent
        os.close(read)
        os.write(write, "".join(new_task_id() for _ in range(8)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = pipe.read()
    os.waitpid(pid, 0)
    parent = "".join(new_task_id() for _ in range(8))
    child_ids = {child[i : i + 32] for i in range(0, len(child), 32)}
    assert len(child_ids) == 8
    assert child_ids.isdisjoint(parent[i : i + 32] for i in range(0, len(parent), 32))
