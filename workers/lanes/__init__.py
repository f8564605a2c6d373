"""Lanes and tenants: priority lanes with minimum shares, weighted fairness between tenants,
per-tenant rate quotas and the tenant registry."""

from workers.lanes.drr import DeficitRoundRobin
from workers.lanes.scheduler import BatchWindow, LaneBatcher

__all__ = ["BatchWindow", "DeficitRoundRobin", "LaneBatcher"]
