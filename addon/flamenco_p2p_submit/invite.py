"""Join codes and the farm values derived from them, with the standard library only.

A join code (``fp1-...``, printed by ``flamenco-p2p invite``) is the base32 text,
in lowercase groups of five letters, of the 32-byte farm key, the farm name in
UTF-8 and a big-endian CRC-32 of both. The farm id and the HTTP token are
HKDF-SHA256 outputs (RFC 5869) of the key under fixed labels, derived here the
same way the daemon derives them, so the add-on never needs the daemon's code.
The add-on keeps the token and the farm id; it never stores the key itself.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import zlib
from dataclasses import dataclass, field

CODE_PREFIX = "fp1"
KEY_BYTES = 32
CHECKSUM_BYTES = 4
MAX_FARM_NAME_BYTES = 64
HKDF_SALT = b"flamenco-p2p"
FARM_ID_LABEL = b"farm id"
FARM_ID_BYTES = 16
TOKEN_LABEL = b"http token"
TOKEN_BYTES = 32


class JoinCodeError(ValueError):
    """A join code that does not decode; the message names the fix."""


@dataclass(frozen=True, slots=True)
class FarmCredentials:
    """The part of a join code that the add-on keeps: farm name, id and API token."""

    farm_name: str
    farm_id: str
    api_token: str = field(repr=False)


def hkdf_sha256(key: bytes, info: bytes, length: int, salt: bytes = HKDF_SALT) -> bytes:
    """Derive length bytes from key for the purpose named by info (RFC 5869)."""
    if not 0 < length <= 255 * hashlib.sha256().digest_size:
        raise ValueError(f"HKDF-SHA256 cannot derive {length} bytes")
    pseudo_random_key = hmac.digest(salt, key, "sha256")
    blocks: list[bytes] = []
    previous = b""
    for counter in range(1, 256):
        previous = hmac.digest(
            pseudo_random_key, previous + info + counter.to_bytes(1, "big"), "sha256"
        )
        blocks.append(previous)
        if sum(len(block) for block in blocks) >= length:
            break
    return b"".join(blocks)[:length]


def farm_id_of(key: bytes) -> str:
    """Return the farm id that nodes advertise over mDNS, as lowercase hex."""
    return hkdf_sha256(key, FARM_ID_LABEL, FARM_ID_BYTES).hex()


def api_token_of(key: bytes) -> str:
    """Return the bearer token of the HTTP API: unpadded base64url text."""
    digest = hkdf_sha256(key, TOKEN_LABEL, TOKEN_BYTES)
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


def parse_join_code(code: str) -> FarmCredentials:
    """Decode a join code into the farm's name, id and token.

    Whitespace and line breaks inside the code are ignored, as are the dashes
    between groups. Raises JoinCodeError saying what is wrong with the code.
    """
    text = "".join(code.split()).lower()
    if not text.startswith(CODE_PREFIX):
        raise JoinCodeError(
            f"the join code must start with {CODE_PREFIX!r}; copy the whole line"
            " that `flamenco-p2p invite` printed on a farm node"
        )
    letters = text[len(CODE_PREFIX) :].replace("-", "").upper()
    if not letters:
        raise JoinCodeError(
            "the join code has nothing after its prefix; copy the whole line again"
        )
    payload = _decode_base32(letters)
    if len(payload) < KEY_BYTES + 1 + CHECKSUM_BYTES:
        raise JoinCodeError("the join code is too short; copy the whole line again")
    data, checksum = payload[:-CHECKSUM_BYTES], payload[-CHECKSUM_BYTES:]
    if zlib.crc32(data).to_bytes(CHECKSUM_BYTES, "big") != checksum:
        raise JoinCodeError(
            "the join code has a typo (its checksum does not match); copy it again"
        )
    key, name_bytes = data[:KEY_BYTES], data[KEY_BYTES:]
    farm_name = _check_farm_name(name_bytes)
    return FarmCredentials(farm_name, farm_id_of(key), api_token_of(key))


def _decode_base32(letters: str) -> bytes:
    padding = "=" * (-len(letters) % 8)
    try:
        payload = base64.b32decode(letters + padding)
    except ValueError:
        raise JoinCodeError(
            "the join code contains letters that cannot be part of one, or is cut"
            " short; copy the whole line again"
        ) from None
    # The last letter can carry bits that decoding drops, so a code with a typo
    # there decodes to the same bytes. Re-encoding shows the difference.
    if base64.b32encode(payload).decode("ascii").rstrip("=") != letters:
        raise JoinCodeError(
            "the join code has a typo in its last letters; copy it again"
        )
    return payload


def _check_farm_name(name_bytes: bytes) -> str:
    try:
        name = name_bytes.decode("utf-8")
    except UnicodeDecodeError:
        raise JoinCodeError("the join code is damaged; copy it again") from None
    if len(name_bytes) > MAX_FARM_NAME_BYTES or not name.strip():
        raise JoinCodeError(
            f"the join code names a farm of {len(name_bytes)} bytes; a farm name has"
            f" 1 to {MAX_FARM_NAME_BYTES} bytes, so the code is damaged"
        )
    if any(ord(char) < 32 for char in name):
        raise JoinCodeError(
            "the join code names a farm with control characters; it is damaged"
        )
    return name
