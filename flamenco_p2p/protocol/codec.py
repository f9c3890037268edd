"""msgpack framing of node-to-node messages, with every size bounded before decoding."""

from __future__ import annotations

from typing import Any

import msgpack

from flamenco_p2p.errors import ProtocolError

# One frame may carry a blob chunk (CHUNK_SIZE) plus its envelope; nothing else is
# anywhere near this size. ZeroMQ sockets reject larger frames before they reach us.
MAX_FRAME_BYTES = 4 * 1024 * 1024 + 64 * 1024
MAX_STR_LEN = 64 * 1024
MAX_BIN_LEN = 4 * 1024 * 1024
MAX_ARRAY_LEN = 100_000
MAX_MAP_LEN = 1_000


def encode(message: dict[str, Any]) -> bytes:
    """Pack a message map; raises ProtocolError when it exceeds the frame limit."""
    data: bytes = msgpack.packb(message, use_bin_type=True)
    if len(data) > MAX_FRAME_BYTES:
        raise ProtocolError(
            f"message {message.get('op')!r} is {len(data)} bytes, over the limit of"
            f" {MAX_FRAME_BYTES}"
        )
    return data


def decode(frame: bytes) -> dict[str, Any]:
    """Unpack one frame into a map; raises ProtocolError for anything malformed."""
    if len(frame) > MAX_FRAME_BYTES:
        raise ProtocolError(f"frame of {len(frame)} bytes is over {MAX_FRAME_BYTES}")
    try:
        value = msgpack.unpackb(
            frame,
            raw=False,
            strict_map_key=True,
            max_str_len=MAX_STR_LEN,
            max_bin_len=MAX_BIN_LEN,
            max_array_len=MAX_ARRAY_LEN,
            max_map_len=MAX_MAP_LEN,
            max_ext_len=0,
        )
    except (ValueError, TypeError, msgpack.ExtraData, RecursionError) as exc:
        raise ProtocolError(f"frame does not decode as msgpack: {exc}") from exc
    if not isinstance(value, dict):
        raise ProtocolError(f"message must be a map, got {type(value).__name__}")
    return value
