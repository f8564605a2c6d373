"""Admission: preprocess's gate between a tenant's request and the pipeline's capacity.

In order, for each new request of a batch: the tenant's policy (unknown tenants get the
default policy or are REJECTED with UNKNOWN_TENANT, by configuration), its lane (the
tenant's class; a request may ask for a lower lane, never a higher one) and its default
deadline, then its rate quota (a token bucket shared by every replica: over it, a request is
REJECTED with QUOTA_EXCEEDED, or held until its token is due, by configuration), then its
cap on tasks in flight. Each step is one Redis round trip for the whole batch.
"""

from __future__ import annotations

import dataclasses
import time

from schemas import ContractError, ErrorCode, InferenceRequest
from workers.lanes.rate import RateQuota
from workers.lanes.registry import TenantDirectory, TenantPolicy
from workers.ledger.quota import TenantQuota
from workers.names import LANES
from workers.settings import LaneSettings
from workers.stages.work import Work


class Admission:
    def __init__(
        self,
        directory: TenantDirectory,
        rate: RateQuota,
        pending: TenantQuota,
        settings: LaneSettings,
    ) -> None:
        self.directory = directory
        self.rate = rate
        self.pending = pending
        self.settings = settings

    async def admit(self, items: list[Work]) -> list[tuple[Work, float]]:
        """Refuse what must be refused (`work.error`), place the rest in their lanes; returns
        the records to hold back, with how long (rate quota in `delay` mode)."""
        placed: list[tuple[Work, TenantPolicy]] = []
        for work in items:
            if work.error is not None or not isinstance(work.message, InferenceRequest):
                continue
            policy = self.directory.policy(work.message.tenant)
            if policy is None:
                work.error = ContractError(
                    ErrorCode.UNKNOWN_TENANT,
                    f"tenant {work.message.tenant!r} has no policy and unknown tenants are "
                    "refused here (`conveyor tenants set` adds one)",
                    "tenant",
                )
                continue
            _place(work, policy)
            placed.append((work, policy))
        later = await self._take_rate_tokens(placed)
        held = {id(work) for work, _ in later}
        await self._take_pending_slots(
            [(w, p) for w, p in placed if w.error is None and id(w) not in held]
        )
        return later

    async def _take_rate_tokens(
        self, placed: list[tuple[Work, TenantPolicy]]
    ) -> list[tuple[Work, float]]:
        limited = [(w, p) for w, p in placed if p.rate_per_s > 0 and not w.admitted]
        if not limited:
            return []
        delay = self.settings.over_quota == "delay"
        waits_ms = await self.rate.take(
            [(w.message.tenant, p.rate_per_s, p.burst) for w, p in limited],
            max_delay_ms=self.settings.max_delay_ms if delay else 0,
        )
        later: list[tuple[Work, float]] = []
        for (work, policy), wait_ms in zip(limited, waits_ms, strict=True):
            if wait_ms <= 0:
                work.admitted = True
            elif delay and wait_ms <= self.settings.max_delay_ms:
                work.admitted = True  # its token is booked: it comes back when it is due
                later.append((work, wait_ms / 1000))
            else:
                work.error = ContractError(
                    ErrorCode.QUOTA_EXCEEDED,
                    f"tenant {work.message.tenant!r} is over its rate quota of "
                    f"{policy.rate_per_s:g} tasks/s; the next token is due in {wait_ms:.0f} ms",
                )
        return later

    async def _take_pending_slots(self, placed: list[tuple[Work, TenantPolicy]]) -> None:
        if not placed:
            return
        caps = [p.max_in_flight for _, p in placed]
        admitted = await self.pending.admit(
            [(w.message.tenant, w.message.task_id) for w, _ in placed], caps
        )
        for (work, policy), ok in zip(placed, admitted, strict=True):
            if not ok:
                cap = policy.max_in_flight or self.pending.max_pending
                work.error = ContractError(
                    ErrorCode.QUOTA_EXCEEDED,
                    f"tenant {work.message.tenant!r} has {cap} tasks in flight, the most "
                    "allowed; retry when some finish",
                )


def _place(work: Work, policy: TenantPolicy) -> None:
    """The request's lane and deadline by its tenant's policy, written into the request."""
    request: InferenceRequest = work.message
    lane = policy.lane
    if request.priority in LANES and LANES.index(request.priority) > LANES.index(lane):
        lane = request.priority  # asking for a lower lane is allowed, a higher one is not
    deadline_ms = request.deadline_ms
    if deadline_ms is None and policy.deadline_ms > 0:
        # From submission, but a client clock ahead of ours must not buy extra time.
        submitted_ms = min(request.submitted_at_ms, int(time.time() * 1000))
        deadline_ms = submitted_ms + policy.deadline_ms
    if lane != request.priority or deadline_ms != request.deadline_ms:
        work.message = dataclasses.replace(request, priority=lane, deadline_ms=deadline_ms)
    work.lane = lane
