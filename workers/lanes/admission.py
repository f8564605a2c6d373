"""Admission: preprocess's gate between a tenant's request and the pipeline's capacity.

First, before anything else looks at a request (`screen`): its `reply_to` must be a topic
answers may go to (`ReplyTopics`; otherwise REJECTED `UNDELIVERABLE`, answered on the
default results topic), and its task id must not be taken by another request (`TaskClaims`;
otherwise REJECTED `DUPLICATE_ID`, the first request's ledger record untouched). Then,
In order, for each new request of a batch: the tenant's policy (unknown tenants get the
default policy or are REJECTED with UNKNOWN_TENANT, by configuration), its lane (the
tenant's class; a request may ask for a lower lane, never a higher one) and its default
deadline, then its rate quota (a token bucket shared by every replica: over it, a request is
REJECTED with QUOTA_EXCEEDED, or held until its token is due, by configuration), then its
cap on tasks in flight (over it: REJECTED, or in `delay` mode held until the tenant has room,
its records then waiting in Kafka once the worker holds its partitions' share). Each step is
one Redis round trip for the whole batch; the in-flight slots of new requests that need no
earlier step ride in the round trip of the id claims.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from schemas import ContractError, ErrorCode, InferenceRequest
from workers.engine.work import Work
from workers.lanes.quota import ADMITTED, REFUSED, TenantQuota
from workers.lanes.rate import RateQuota
from workers.lanes.registry import TenantDirectory, TenantPolicy
from workers.lanes.replies import ReplyTopics
from workers.ledger.claims import TaskClaims
from workers.ledger.scripts import run_scripts
from workers.names import LANES
from workers.settings import LaneSettings


@dataclass
class Holds:
    """What admission holds back in `delay` mode instead of refusing."""

    delayed: list[tuple[Work, float]] = field(default_factory=list)
    """Over the rate quota: each with the seconds until its booked token is due."""
    at_cap: list[Work] = field(default_factory=list)
    """Over the tenant's cap on tasks in flight: to try again once some have finished."""

    def works(self) -> list[Work]:
        return [w for w, _ in self.delayed] + self.at_cap


class Admission:
    def __init__(
        self,
        directory: TenantDirectory,
        rate: RateQuota,
        pending: TenantQuota,
        settings: LaneSettings,
        clock: Callable[[], float] = time.monotonic,
        replies: ReplyTopics | None = None,
        claims: TaskClaims | None = None,
    ) -> None:
        self.replies = replies
        self.claims = claims
        self.directory = directory
        self.rate = rate
        self.pending = pending
        self.settings = settings
        self._clock = clock
        self._full_until: dict[str, float] = {}
        """Tenants found at their cap lately (delay mode): their requests are held without
        asking Redis until then, so a flooding tenant costs no round trip per request."""

    @property
    def holds_at_cap(self) -> bool:
        """`delay` mode: a request over its tenant's cap waits for room instead of failing."""
        return self.settings.over_quota == "delay"

    def is_full(self, tenant: str) -> bool:
        """Found at its cap on tasks in flight within the last `cap_retry_ms` (delay mode)."""
        return self._full_until.get(tenant, 0.0) > self._clock()

    async def screen(self, items: list[Work]) -> None:
        """Refuse requests whose `reply_to` may not be answered on, then those reusing a task
        id another record took (`work.error`); before any other work, redeliveries included
        (a redelivered record finds its own claim)."""
        requests = [w for w in items if w.error is None and isinstance(w.message, InferenceRequest)]
        if self.replies is not None:
            for work in requests:
                request: InferenceRequest = work.message
                reason = await self.replies.refusal(request.reply_to, request.tenant)
                if reason is not None:
                    # Answered on the default results topic: never where it may not go.
                    work.message = request.evolve(reply_to=None)
                    work.error = ContractError(ErrorCode.UNDELIVERABLE, reason, "reply_to")
        if self.claims is None:
            return
        claiming = [w for w in requests if w.error is None]
        if not claiming:
            return
        claim, owned_of = self.claims.claim_call(
            [(w.message.task_id, _source(w)) for w in claiming]
        )
        # Each tenant's in-flight slot goes in the same round trip where nothing must come
        # first (see `_slot_now`); the rest are asked in `admit`.
        early = [(w, p) for w in claiming if (p := self._slot_now(w)) is not None]
        slot_calls, codes_of = self.pending.admit_calls(
            [(w.message.tenant, w.message.task_id) for w, _ in early],
            [p.max_in_flight for _, p in early],
        )
        replies = await run_scripts(self.claims.redis, [claim, *slot_calls])
        codes = {id(w): code for (w, _), code in zip(early, codes_of(replies[1:]), strict=True)}
        taken_by_duplicates: list[tuple[str, str]] = []
        for work, ours in zip(claiming, owned_of(replies[0]), strict=True):
            code = codes.get(id(work))
            if ours:
                work.slot = None if code is None else code != REFUSED
                continue
            work.error = ContractError(
                ErrorCode.DUPLICATE_ID,
                f"task id {work.message.task_id!r} is already taken by another request; "
                "its answer stands (use a new id for a new request)",
                "id",
            )
            if code == ADMITTED:  # counted now, for a task the first request no longer holds
                taken_by_duplicates.append((work.message.tenant, work.message.task_id))
        if taken_by_duplicates:
            await self.pending.release_tasks(taken_by_duplicates)

    def _slot_now(self, work: Work) -> TenantPolicy | None:
        """The tenant's policy when its slot may be taken with the claim: not for a record
        that may be a redelivery (the ledger may say its task is done: a slot taken again
        would never be given back), nor where the rate quota comes first (a request refused
        by it must hold no slot), nor for a tenant found full (held without asking)."""
        if work.may_be_redelivered:
            return None
        policy = self.directory.policy(work.message.tenant)
        if policy is None or (policy.rate_per_s > 0 and not work.admitted):
            return None
        return None if self.is_full(work.message.tenant) else policy

    async def admit(self, items: list[Work]) -> Holds:
        """Refuse what must be refused (`work.error`), place the rest in their lanes; returns
        what to hold back (`delay` mode)."""
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
        holds = Holds(delayed=await self._take_rate_tokens(placed))
        delayed = {id(work) for work, _ in holds.delayed}
        holds.at_cap = await self._take_pending_slots(
            [(w, p) for w, p in placed if w.error is None and id(w) not in delayed]
        )
        return holds

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

    async def _take_pending_slots(self, placed: list[tuple[Work, TenantPolicy]]) -> list[Work]:
        """Returns the records held at their tenant's cap (delay mode)."""
        held: list[Work] = []
        delay = self.holds_at_cap
        if delay:
            now = self._clock()
            self._full_until = {t: u for t, u in self._full_until.items() if u > now}
            # A record whose slot was taken with its claim holds it: it goes on.
            held = [w for w, _ in placed if w.message.tenant in self._full_until and not w.slot]
            for work in held:
                work.slot = None  # asked again when it comes back
            placed = [
                (w, p) for w, p in placed if w.slot or w.message.tenant not in self._full_until
            ]
        if not placed:
            return held
        ask = [(w, p) for w, p in placed if w.slot is None]
        asked = await self.pending.admit(
            [(w.message.tenant, w.message.task_id) for w, _ in ask],
            [p.max_in_flight for _, p in ask],
        )
        answers = {id(w): ok for (w, _), ok in zip(ask, asked, strict=True)}
        for work, policy in placed:
            ok = work.slot if work.slot is not None else answers[id(work)]
            work.slot = None  # asked again if the record is held and comes back
            if ok:
                continue
            tenant = work.message.tenant
            if delay:
                held.append(work)
                self._full_until[tenant] = self._clock() + self.settings.cap_retry_ms / 1000
                continue
            cap = policy.max_in_flight or self.pending.max_pending
            work.error = ContractError(
                ErrorCode.QUOTA_EXCEEDED,
                f"tenant {tenant!r} has {cap} tasks in flight, the most allowed; retry when "
                "some finish",
            )
        return held


def _source(work: Work) -> str:
    record = work.record
    return f"{record.topic}/{record.partition}/{record.offset}"


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
        # `evolve` checks the two fields it changes; `replace` would check every field again.
        work.message = request.evolve(priority=lane, deadline_ms=deadline_ms)
    work.lane = lane
