"""Message codec and schemas: every bad input becomes a ProtocolError."""

from __future__ import annotations

import contextlib
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flamenco_p2p.errors import ProtocolError, VersionMismatch
from flamenco_p2p.protocol.codec import MAX_FRAME_BYTES, decode, encode
from flamenco_p2p.protocol.messages import BODIES, PROTOCOL_VERSION, pack, unpack

SENDER = "ab" * 16


def envelope(**changes: Any) -> bytes:
    raw = {
        "op": "leaving",
        "v": PROTOCOL_VERSION,
        "from": SENDER,
        "epoch": None,
        "id": None,
        "body": {"reason": "bye"},
    }
    raw.update(changes)
    frame: bytes = msgpack.packb(raw)
    return frame


def test_unpack_round_trip() -> None:
    message = unpack(
        pack(
            "vote",
            SENDER,
            {"role": "server", "epoch": 3, "granted": True, "known_epoch": 2},
            epoch=4,
        )
    )
    assert message.op == "vote"
    assert message.sender == SENDER
    assert message.epoch == 4
    assert message.body["granted"] is True


@pytest.mark.parametrize(
    ("frame", "field"),
    [
        (envelope(op="no_such_op"), "op"),
        (envelope(**{"from": "not-hex"}), "from"),
        (envelope(body={"reason": 5}), "reason"),
        (envelope(body={}), "reason"),
        (envelope(body={"reason": "x", "extra": 1}), ""),
        (envelope(body={"reason": "x" * 201}), "reason"),
        (envelope(epoch=-1), "epoch"),
        (envelope(v="1"), "v"),
        (envelope(surprise=True), "envelope"),
    ],
)
def test_unpack_rejects_bad_fields(frame: bytes, field: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        unpack(frame)
    assert field in str(caught.value) or caught.value.field == field


def test_unpack_newer_version_names_both() -> None:
    with pytest.raises(VersionMismatch) as caught:
        unpack(envelope(v=PROTOCOL_VERSION + 1))
    assert str(PROTOCOL_VERSION + 1) in str(caught.value)
    assert str(PROTOCOL_VERSION) in str(caught.value)


def test_decode_rejects_huge_frame() -> None:
    with pytest.raises(ProtocolError):
        decode(b"\x00" * (MAX_FRAME_BYTES + 1))


def test_decode_rejects_huge_length_prefix() -> None:
    # A map header claiming 2**32-1 entries must fail fast, not allocate.
    with pytest.raises(ProtocolError):
        decode(b"\xdf\xff\xff\xff\xff")


def test_decode_bounds_nested_arrays() -> None:
    frame = msgpack.packb({"body": [[]] * 200_000})
    with pytest.raises(ProtocolError):
        decode(frame)


def test_encode_rejects_oversized_message() -> None:
    with pytest.raises(ProtocolError):
        encode({"op": "x", "data": b"\x00" * MAX_FRAME_BYTES})


def test_every_schema_rejects_empty_body() -> None:
    for op, schema in BODIES.items():
        if not schema.fields or set(schema.fields) <= schema.optional:
            continue
        with pytest.raises(ProtocolError):
            unpack(envelope(op=op, body={}))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_unpack_random_bytes_only_protocol_errors(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        unpack(data)


plain = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(BODIES)), plain)
def test_unpack_random_bodies_only_protocol_errors(op: str, body: Any) -> None:
    try:
        frame = envelope(op=op, body=body)
    except (ValueError, TypeError, OverflowError):
        return
    with contextlib.suppress(ProtocolError):
        unpack(frame)
