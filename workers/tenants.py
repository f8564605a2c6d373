"""Per-tenant topics (`kafka.tenant_topics`): a tenant's two topics and the ACLs to grant."""

from __future__ import annotations

from workers.kafka.admin import Acl, TopicSpec, create_acls, ensure_topics
from workers.names import Topics
from workers.settings import Settings


def tenant_acls(topics: Topics, tenant: str, principal: str) -> list[Acl]:
    """What a tenant's own client needs: write its requests topic, read its results topic
    (the client reads by assignment, so no consumer group), and nothing else."""
    requests, results = topics.tenant_topics(tenant)
    return [
        Acl(principal, "write", requests),
        Acl(principal, "describe", requests),
        Acl(principal, "read", results),
        Acl(principal, "describe", results),
    ]


def worker_acls(topics: Topics, tenant: str, principal: str) -> list[Acl]:
    """What the workers' principal needs for one tenant: preprocess reads the requests topic
    (in its group `<prefix>.preprocess`), every stage may answer on the results topic."""
    requests, results = topics.tenant_topics(tenant)
    return [
        Acl(principal, "read", requests),
        Acl(principal, "describe", requests),
        Acl(principal, "write", results),
        Acl(principal, "describe", results),
    ]


async def add_tenant(
    settings: Settings, tenant: str, principal: str, worker_principal: str | None, grant: bool
) -> list[Acl]:
    """Create the tenant's topics; returns the ACLs it and the workers need (granted when
    `grant`: the connection must then be a super user's)."""
    topics = Topics(settings.kafka.topic_prefix)
    k = settings.kafka
    await ensure_topics(
        k,
        [
            TopicSpec(name, k.partitions, k.replication_factor)
            for name in topics.tenant_topics(tenant)
        ],
    )
    acls = tenant_acls(topics, tenant, principal)
    if worker_principal is not None:
        acls += worker_acls(topics, tenant, worker_principal)
    if grant:
        await create_acls(k, acls)
    return acls
