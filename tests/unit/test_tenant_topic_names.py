"""Per-tenant topic names: built in `Topics`, the tenant read back only from a requests topic."""

from __future__ import annotations

import re

import pytest

from workers.names import Topics


def test_tenant_topic_names_and_pattern() -> None:
    topics = Topics("p")
    assert topics.tenant_topics("acme") == ("p.requests.acme", "p.results.acme")
    pattern = re.compile(topics.tenant_requests_pattern)
    assert pattern.match("p.requests.acme")
    assert not pattern.match("p.requests")
    assert not pattern.match("p.requests.a.b")
    assert not pattern.match("p.results.acme")
    assert topics.tenant_of("p.requests.acme") == "acme"
    assert topics.tenant_of("p.results.acme") is None
    assert topics.tenant_of("p.requests") is None


@pytest.mark.parametrize("bad", ["", "a.b", "-x", "a/b", "x" * 65])
def test_a_tenant_that_cannot_name_a_topic_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="cannot name a topic"):
        Topics("p").requests_of(bad)
