"""Where a request may ask for its answer (`reply_to`), checked at admission before any work.

A `reply_to` topic must exist and be writable by the stage's principal (`TopicCheck`: one
metadata request per topic, the answer kept for `limits.reply_topic_check_ttl_s`), and may
not be a topic internal to Kafka (`__consumer_offsets`, ...) nor one of Conveyor's own
(`<prefix>.requests`, a lane topic, the dead letters, ...), except the results topics a
request's answer goes to anyway: `<prefix>.results` and `<prefix>.results.<its tenant>`.
"""

from __future__ import annotations

from workers.kafka.produce import TopicCheck, static_refusal
from workers.names import TENANT_RE, Topics


class ReplyTopics:
    def __init__(self, check: TopicCheck, topics: Topics) -> None:
        self.check = check
        self.topics = topics

    async def refusal(self, reply_to: str | None, tenant: str) -> str | None:
        """None when answers may go to `reply_to`, else why not."""
        if reply_to is None:
            return None
        if self.topics.is_gateway_replies(reply_to):
            # A gateway instance's reply topic (the gateway publishes with it): it must exist.
            reason = await self.check.refusal(reply_to)
            return None if reason is None else f"reply_to: {reason}"
        if self.topics.is_own(reply_to):
            allowed = {self.topics.results}
            if TENANT_RE.fullmatch(tenant):
                allowed.add(self.topics.results_of(tenant))
            if reply_to not in allowed:
                return f"reply_to {reply_to!r} is one of Conveyor's own topics"
            return None
        reason = static_refusal(reply_to) or await self.check.refusal(reply_to)
        return None if reason is None else f"reply_to: {reason}"
