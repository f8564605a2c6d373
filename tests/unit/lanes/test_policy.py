"""Tenant policies without Redis: validation names the bad field and value, JSON round
trips exactly, readers tolerate fields from newer writers."""

from __future__ import annotations

import math

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from workers.lanes.registry import PolicyError, TenantPolicy, check_tenant
from workers.names import LANES
from workers.settings import LaneSettings

policies = st.builds(
    TenantPolicy,
    lane=st.sampled_from(LANES),
    weight=st.floats(min_value=1e-6, max_value=1e6),
    rate_per_s=st.one_of(st.just(0.0), st.floats(min_value=1e-3, max_value=1e6)),
    burst=st.integers(min_value=0, max_value=10**6),
    max_in_flight=st.integers(min_value=0, max_value=10**9),
    deadline_ms=st.integers(min_value=0, max_value=10**9),
)


@given(policies)
def test_json_round_trip_is_exact(policy: TenantPolicy) -> None:
    assert TenantPolicy.from_json(policy.to_json()) == policy


def test_defaults_are_valid_and_unlimited() -> None:
    policy = TenantPolicy()
    assert (policy.lane, policy.weight, policy.limited, policy.deadline_ms) == (
        "standard",
        1.0,
        False,
        0,
    )


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"lane": "gold"}, "lane"),
        ({"weight": 0}, "weight"),
        ({"weight": -1.5}, "weight"),
        ({"weight": math.nan}, "weight"),
        ({"weight": math.inf}, "weight"),
        ({"weight": True}, "weight"),
        ({"weight": "2"}, "weight"),
        ({"rate_per_s": -0.1}, "rate_per_s"),
        ({"rate_per_s": math.inf}, "rate_per_s"),
        ({"burst": -1}, "burst"),
        ({"burst": 2.5}, "burst"),
        ({"max_in_flight": -3}, "max_in_flight"),
        ({"deadline_ms": False}, "deadline_ms"),
        ({"deadline_ms": None}, "deadline_ms"),
    ],
)
def test_invalid_values_name_the_field_and_the_value(
    changes: dict[str, object], field: str
) -> None:
    with pytest.raises(PolicyError, match=field) as raised:
        TenantPolicy().replace(**changes)
    assert repr(next(iter(changes.values()))) in str(raised.value)


def test_policy_error_is_a_value_error() -> None:
    assert issubclass(PolicyError, ValueError)


def test_replace_keeps_other_fields_and_refuses_unknown_ones() -> None:
    policy = TenantPolicy(lane="bulk", rate_per_s=5).replace(weight=3)
    assert policy == TenantPolicy(lane="bulk", weight=3.0, rate_per_s=5.0)
    with pytest.raises(PolicyError, match="unknown policy fields: colour"):
        policy.replace(colour="red")


def test_integer_numbers_are_stored_as_floats() -> None:
    policy = TenantPolicy(weight=2, rate_per_s=10)
    assert isinstance(policy.weight, float)
    assert isinstance(policy.rate_per_s, float)
    assert orjson.loads(policy.to_json())["weight"] == 2.0


def test_readers_ignore_unknown_keys_and_default_missing_ones() -> None:
    raw = orjson.dumps({"lane": "realtime", "weight": 4, "priority_boost": 7})
    assert TenantPolicy.from_json(raw) == TenantPolicy(lane="realtime", weight=4.0)


@pytest.mark.parametrize("raw", [b"not json", b"[1, 2]", b'"realtime"', b'{"lane": "gold"}'])
def test_unreadable_json_is_a_policy_error(raw: bytes) -> None:
    with pytest.raises(PolicyError):
        TenantPolicy.from_json(raw)


@pytest.mark.parametrize(
    ("rate_per_s", "burst", "tokens"),
    [(0, 0, 1), (0.5, 0, 1), (2.5, 0, 3), (100, 0, 100), (5, 12, 12)],
)
def test_burst_defaults_to_one_seconds_worth(rate_per_s: float, burst: int, tokens: int) -> None:
    assert TenantPolicy(rate_per_s=rate_per_s, burst=burst).burst_tokens == tokens


def test_in_flight_cap_falls_back_to_the_global_default() -> None:
    assert TenantPolicy().in_flight_cap(100) == 100
    assert TenantPolicy(max_in_flight=7).in_flight_cap(100) == 7


def test_defaults_come_from_lane_settings() -> None:
    lanes = LaneSettings(default_class="bulk", default_weight=0.25)
    assert TenantPolicy.defaults(lanes) == TenantPolicy(lane="bulk", weight=0.25)


@pytest.mark.parametrize("name", ["acme", "A-1_b", "9" * 64])
def test_valid_tenant_names(name: str) -> None:
    assert check_tenant(name) == name


@pytest.mark.parametrize("name", ["", "-acme", "ac.me", "a b", "x" * 65])
def test_invalid_tenant_names(name: str) -> None:
    with pytest.raises(PolicyError, match="not a valid name"):
        check_tenant(name)
