"""Lane and tenant policy in one place: the tenant registry, admission (rate quota, cap on
tasks in flight, reply topics), flow control between lanes, the latency budget and batch
slots, and the fair lane batcher (priority lanes with minimum shares, weighted fairness
between tenants by deficit round robin)."""

from workers.lanes.batcher import BatchWindow, LaneBatcher
from workers.lanes.drr import DeficitRoundRobin

__all__ = ["BatchWindow", "DeficitRoundRobin", "LaneBatcher"]
