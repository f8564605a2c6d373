"""Fuzzing: random bytes and mutations of valid messages raise ContractError and nothing else."""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import (
    JSON,
    MSGPACK,
    ContractError,
    DecodeLimits,
    ErrorCode,
    InferenceRequest,
    Message,
    decode_request,
    decode_result,
    encode,
)
from tests.unit.schemas.make_golden import golden_messages
from tests.unit.schemas.wire_helpers import frame, unframe

DECODERS: list[Callable[..., Message]] = [decode_request, decode_result]
LIMITS = DecodeLimits(max_message_bytes=1 << 20, max_tensor_elements=1 << 16)
CASES = 12_000


def seeds() -> list[tuple[str, bytes]]:
    """(content type, value) of valid messages of every type, in both encodings."""
    messages: list[Message] = list(golden_messages().values())
    messages.append(
        InferenceRequest(
            task_id="t",
            tenant="a",
            pipeline="p",
            inputs={"b": np.array([True, False]), "h": np.array([[1, 2]], dtype=np.uint16)},
        )
    )
    return [(ct, encode(m, ct)) for m in messages for ct in (MSGPACK, JSON)]


SEEDS = seeds()
INTERESTING = [0x00, 0xFF, 0x7F, 0x80, 0xC1, 0xC4, 0xD9, 0xDC, 0xDE, ord("{"), ord('"'), ord("[")]


def random_value(rng: random.Random, binary: bool, depth: int = 0) -> Any:
    choices: list[Any] = [
        None,
        True,
        -1,
        0,
        2**63,
        2**64 - 1,
        -(2**63),
        1.5,
        math.nan,
        math.inf,
        -math.inf,
        "",
        "x" * rng.randrange(300),
        "1.0",
        "2.0",
        "FP32",
        "BYTES",
        "DONE",
        [],
        {},
    ]
    choices += [b"", b"\xff" * 3] if binary else [2**64, -(2**64), 10**30, "\ud800"]
    if depth < 3 and rng.random() < 0.3:
        if rng.random() < 0.5:
            return [random_value(rng, binary, depth + 1) for _ in range(rng.randrange(4))]
        return {
            rng.choice(["name", "shape", "data", "x", "id"]): random_value(rng, binary, depth + 1)
        }
    return rng.choice(choices)


def mutate_tree(rng: random.Random, node: Any, binary: bool) -> Any:
    """Replace, delete or add one random node of a decoded body."""
    if isinstance(node, dict) and node and rng.random() < 0.8:
        key = rng.choice(list(node))
        action = rng.random()
        if action < 0.15:
            del node[key]
        elif action < 0.25:
            node[f"extra{rng.randrange(3)}"] = random_value(rng, binary)
        elif action < 0.6:
            node[key] = random_value(rng, binary)
        else:
            node[key] = mutate_tree(rng, node[key], binary)
        return node
    if isinstance(node, list) and node and rng.random() < 0.8:
        index = rng.randrange(len(node))
        if rng.random() < 0.2:
            node.pop(index)
        else:
            node[index] = mutate_tree(rng, node[index], binary)
        return node
    return random_value(rng, binary)


def structured(rng: random.Random, content_type: str, value: bytes) -> bytes:
    if content_type == JSON:
        return json.dumps(mutate_tree(rng, json.loads(value), False)).encode()
    envelope, data = unframe(value)
    if rng.random() < 0.2:
        data = data[: rng.randrange(len(data) + 1)]
    return frame(mutate_tree(rng, envelope, True), data)


def byte_level(rng: random.Random, value: bytes) -> bytes:
    data = bytearray(value)
    op = rng.randrange(6)
    if op == 0:
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif op == 1:
        del data[rng.randrange(len(data)) :]
    elif op == 2:
        other = rng.choice(SEEDS)[1]
        data = data[: rng.randrange(len(data))] + other[rng.randrange(len(other)) :]
    elif op == 3:
        position = rng.randrange(len(data))
        data[position:position] = rng.randbytes(rng.randint(1, 16))
    elif op == 4:
        start = rng.randrange(len(data))
        del data[start : start + rng.randint(1, 32)]
    else:
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.choice(INTERESTING)
    return bytes(data)


def matching_decoder(value: bytes) -> Callable[..., Message]:
    """The decoder meant for a seed (so mutations get past the unknown-field check)."""
    return decode_request if b"inputs" in value else decode_result


def decode_any(rng: random.Random, value: bytes, content_type: str) -> str:
    headers = rng.choice([None, [("content-type", content_type.encode())]])
    decoder = rng.choice(DECODERS) if rng.random() < 0.2 else matching_decoder(value)
    try:
        decoder(value, headers, limits=LIMITS)
    except ContractError as error:
        failure = error
    else:
        return "ok"
    assert isinstance(failure.code, ErrorCode)
    assert isinstance(failure.message, str)
    return failure.code.value


def test_seeded_mutations_only_raise_contract_errors() -> None:
    rng = random.Random(20240611)
    outcomes: Counter[str] = Counter()
    for _ in range(CASES):
        content_type, value = rng.choice(SEEDS)
        roll = rng.random()
        if roll < 0.05:
            value = rng.randbytes(rng.randrange(200))
        elif roll < 0.55:
            value = structured(rng, content_type, value)
        else:
            value = byte_level(rng, value)
        outcomes[decode_any(rng, value, content_type)] += 1
    assert sum(outcomes.values()) == CASES
    assert len(outcomes) >= 10, outcomes  # the mutations reach deep validation, not just framing


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.sampled_from([MSGPACK, JSON]))
def test_random_bytes_only_raise_contract_errors(value: bytes, content_type: str) -> None:
    decode_any(random.Random(0), value, content_type)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(SEEDS), st.integers(0, 2**32), st.booleans())
def test_hypothesis_mutations_only_raise_contract_errors(
    seed: tuple[str, bytes], salt: int, structural: bool
) -> None:
    rng = random.Random(salt)
    content_type, value = seed
    mutated = structured(rng, content_type, value) if structural else byte_level(rng, value)
    decode_any(rng, mutated, content_type)


def test_envelope_garbage_types_are_contract_errors() -> None:
    envelopes: list[object] = [None, 1, "x", b"x", [], {1: 2}, {"inputs": msgpack.ExtType(5, b"x")}]
    for envelope in envelopes:
        value = frame(None, raw_envelope=msgpack.packb(envelope, strict_types=False))
        outcome = decode_any(random.Random(1), value, MSGPACK)
        assert outcome != "ok"
