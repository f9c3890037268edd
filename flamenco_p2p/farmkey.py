"""The farm key: one random secret that every member of a farm holds.

Everything else is derived from it with HKDF-SHA256 (RFC 5869), each value under
its own label, so that knowing one derived value reveals nothing of the key or of
the others:

- the farm id advertised over mDNS,
- the CURVE key pairs of ZeroMQ servers and clients,
- the token that guards changes through the HTTP API.

The key lives in ``farm.key`` in the data directory, readable by its owner only.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import secrets
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import zmq
import zmq.utils.z85

from flamenco_p2p.errors import ConfigError, InvalidInput

logger = logging.getLogger(__name__)

KEY_FILE = "farm.key"
KEY_BYTES = 32
CODE_PREFIX = "fp1"
MAX_FARM_NAME_BYTES = 64
_GROUP = 5


def hkdf(
    key: bytes, label: str | bytes, length: int = 32, salt: bytes = b"flamenco-p2p"
) -> bytes:
    """Derive ``length`` bytes from the farm key for one purpose (RFC 5869).

    The standard library has HMAC but no HKDF, and the two steps below are the
    whole of it; the tests check them against the RFC's test vectors.
    """
    info = label.encode() if isinstance(label, str) else label
    prk = hmac.new(salt, key, hashlib.sha256).digest()
    output = b""
    block = b""
    counter = 1
    while len(output) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        output += block
        counter += 1
    return output[:length]


@dataclass(frozen=True, slots=True)
class CurvePair:
    """A CURVE key pair in Z85 text, as ZeroMQ takes it."""

    public: bytes
    secret: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class FarmKey:
    """A farm's name and key, with every value derived from the key."""

    farm: str
    key: bytes = field(repr=False)

    @property
    def farm_id(self) -> str:
        """The id advertised over mDNS; it reveals nothing of the key."""
        return hkdf(self.key, "farm id", 16).hex()

    @property
    def server_curve(self) -> CurvePair:
        """The key pair every ZeroMQ socket that accepts connections uses."""
        return _curve_pair(hkdf(self.key, "curve server"))

    @property
    def client_curve(self) -> CurvePair:
        """The key pair every ZeroMQ socket that connects uses."""
        return _curve_pair(hkdf(self.key, "curve client"))

    @property
    def api_token(self) -> str:
        """The bearer token that HTTP requests which change the farm must carry."""
        return (
            base64.urlsafe_b64encode(hkdf(self.key, "http token")).decode().rstrip("=")
        )

    def invite_code(self) -> str:
        """Return the join code: the key and the farm name, for pasting."""
        name = self.farm.encode("utf-8")
        payload = self.key + name
        payload += zlib.crc32(payload).to_bytes(4, "big")
        text = base64.b32encode(payload).decode("ascii").rstrip("=").lower()
        groups = [text[i : i + _GROUP] for i in range(0, len(text), _GROUP)]
        return CODE_PREFIX + "-" + "-".join(groups)


def _curve_pair(seed: bytes) -> CurvePair:
    secret = zmq.utils.z85.encode(seed)
    return CurvePair(zmq.curve_public(secret), secret)


def check_token(given: str, expected: str) -> bool:
    """Compare a presented token with the farm's in constant time."""
    return hmac.compare_digest(given.encode(), expected.encode())


def check_farm_name(name: str) -> str:
    """Return a valid farm name, or raise InvalidInput saying what is allowed."""
    encoded = name.encode("utf-8")
    if not name.strip() or len(encoded) > MAX_FARM_NAME_BYTES:
        raise InvalidInput(
            f"farm name {name!r} is invalid; use 1 to {MAX_FARM_NAME_BYTES} bytes"
        )
    if any(ord(c) < 32 for c in name):
        raise InvalidInput(f"farm name {name!r} contains control characters")
    return name


def parse_invite(code: str) -> FarmKey:
    """Decode a join code; raises InvalidInput naming what is wrong."""
    text = "".join(code.split()).lower()
    prefix, body = text[: len(CODE_PREFIX)], text[len(CODE_PREFIX) :].lstrip("-")
    if prefix != CODE_PREFIX or not body:
        raise InvalidInput(
            f"join code must start with {CODE_PREFIX!r}; copy the whole line that"
            " `flamenco-p2p invite` printed"
        )
    body = body.replace("-", "").upper()
    try:
        payload = base64.b32decode(body + "=" * (-len(body) % 8))
    except ValueError as exc:
        raise InvalidInput(
            "join code is incomplete or has a typo; copy the whole line again"
        ) from exc
    if base64.b32encode(payload).decode("ascii").rstrip("=") != body:
        # The last letter carries spare bits that decoding drops; a code that
        # does not re-encode to itself was mistyped there.
        raise InvalidInput("join code has a typo in its last letters; copy it again")
    if len(payload) < KEY_BYTES + 5:
        raise InvalidInput("join code is too short; copy the whole line again")
    data, checksum = payload[:-4], payload[-4:]
    if zlib.crc32(data).to_bytes(4, "big") != checksum:
        raise InvalidInput("join code has a typo (checksum mismatch); copy it again")
    try:
        farm = data[KEY_BYTES:].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput("join code is damaged; copy it again") from exc
    return FarmKey(check_farm_name(farm), data[:KEY_BYTES])


def new_farm_key(farm: str) -> FarmKey:
    """Create a key for a new farm."""
    return FarmKey(check_farm_name(farm), secrets.token_bytes(KEY_BYTES))


def key_path(data_dir: Path) -> Path:
    """Return where a data directory keeps its farm key."""
    return data_dir / KEY_FILE


def save_farm_key(data_dir: Path, farm_key: FarmKey, replace: bool = False) -> Path:
    """Write the key file with mode 0600; raises ConfigError if one exists."""
    path = key_path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    existing = load_farm_key(data_dir) if path.exists() else None
    if existing is not None and not replace:
        if existing.key == farm_key.key:
            return path
        raise ConfigError(
            f"{path} already contains the key of farm {existing.farm!r}; pass --force"
            " to replace it (this node then leaves that farm)"
        )
    text = json.dumps({"version": 1, "farm": farm_key.farm, "key": farm_key.key.hex()})
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text + "\n")
    os.replace(tmp, path)
    logger.info("stored the key of farm %s in %s", farm_key.farm, path)
    return path


def load_farm_key(data_dir: Path) -> FarmKey:
    """Read the key file; raises ConfigError with the fix when it is missing or bad."""
    path = key_path(data_dir)
    try:
        mode = path.stat().st_mode & 0o777
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(
            f"no farm key in {data_dir}; create a farm with `flamenco-p2p init` or"
            " join one with `flamenco-p2p join CODE` (same --data-dir)"
        ) from exc
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read farm key {path}: {exc}") from exc
    if mode & 0o077:
        raise ConfigError(
            f"farm key {path} is readable by others (mode {mode:o}); run"
            f" `chmod 600 {path}`"
        )
    try:
        key = bytes.fromhex(raw["key"])
        farm = check_farm_name(raw["farm"])
    except (KeyError, TypeError, ValueError, InvalidInput) as exc:
        raise ConfigError(f"farm key {path} is damaged; join the farm again") from exc
    if len(key) != KEY_BYTES:
        raise ConfigError(f"farm key {path} is damaged; join the farm again")
    return FarmKey(farm, key)
