"""A running node under more than 100,000 mutated messages on all of its ports.

In a 1-node farm the one daemon has the manager and server roles, so it serves
all three ports. A member client (it has the farm key, so CURVE and ZAP admit it) sends
schema-valid bodies, mutated bodies and mutated frames for every operation in
BODIES. Afterwards the daemon must still run, must have logged no traceback, must
not have grown much, and must still render a job.

Every address that a message carries is forced to 127.200.x.y on a port that no
wildcard socket listens on, because the node connects to the addresses it hears of.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import math
import random
import re
import string
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq
import zmq.asyncio
from farm import LocalFarm

from flamenco_p2p.errors import ProtocolError
from flamenco_p2p.farmkey import load_farm_key
from flamenco_p2p.protocol.codec import MAX_BIN_LEN, MAX_FRAME_BYTES, decode
from flamenco_p2p.protocol.messages import BODIES, PROTOCOL_VERSION, pack
from flamenco_p2p.protocol.schema import (
    Bin,
    Bool,
    Check,
    Float,
    Int,
    List,
    Map,
    Optional,
    Plain,
    Str,
)
from flamenco_p2p.render.demo_scene import make_demo_scene
from flamenco_p2p.render.validate import validate_output
from flamenco_p2p.roles.manager import MANAGER_OPS
from flamenco_p2p.roles.server import SERVER_OPS
from flamenco_p2p.security import farm_context, secure_client
from flamenco_p2p.submission import build_render_job
from flamenco_p2p.transport import configure

pytestmark = [pytest.mark.slow, pytest.mark.render]

SEED = 20_260_101
# Messages sent while the roles stay put: no claim names the farm's roles, so the
# manager and server ports stay bound and every message reaches them.
STABLE_MESSAGES = 90_000
# Messages sent while heartbeats also claim the farm's roles at newer epochs, so
# the node steps down and the role ports come and go.
ELECTION_MESSAGES = 20_000
BARRIER_EVERY = 250
BARRIER_TIMEOUT = 30.0
# Fraction of messages sent unchanged. The rest get a mutated body or frame.
VALID_FRACTION = 0.25
FRAME_MUTATION_FRACTION = 0.3

# The daemon's own tables are bounded (1,024 rate-limit keys per endpoint, 512
# peers, 1,000 votes, 64 open outputs). On a 2-core VM the resident size grew by
# about 55 MB in a run with the addresses drawn from 7 loopback ones: handler tasks
# still waiting on timeouts, job rows, the database cache and allocator high-water
# (an estimate, not a breakdown). 100 MB leaves room for that, and a table that
# grows with every fuzzed id, role or contact passes it within one run.
RSS_GROWTH_LIMIT = 200 * 1024 * 1024
# Measured: the whole run grew by 55 to 90 MB, most of it in the first half
# (allocator high-water from frames near the 4 MiB limit, and bounded tables
# filling up). A leak per message shows up as steady growth in the second half.
SECOND_HALF_GROWTH_LIMIT = 40 * 1024 * 1024

FARM_ROLES = ("server", "manager:lab")
NODE_OPS = frozenset(
    {
        "heartbeat",
        "leaving",
        "vote_request",
        "client_submit",
        "client_status",
        "client_job",
        "client_cancel",
        "client_task_log",
        "blob_get",
        "output_put",
    }
)
PORT_KEYS = frozenset({"node_port", "manager_port", "server_port"})
CANDIDATE_PORTS = (7776, 7777, 9999)
BARRIER_ID_BASE = 2**62
TEXT = string.ascii_letters + string.digits + " ._-:/\\é✓\u200b"
HEX = "0123456789abcdef"
HANDLER_FAILED = re.compile(r"handling \S+ from \S+ failed|round failed")


def wildcard_ports() -> set[int]:
    """Return the TCP ports that some socket listens on for every address."""
    ports = set()
    for table, any_address in (
        ("/proc/net/tcp", "00000000"),
        ("/proc/net/tcp6", "0" * 32),
    ):
        with contextlib.suppress(OSError), open(table, encoding="ascii") as handle:
            for line in list(handle)[1:]:
                fields = line.split()
                address, port = fields[1].split(":")
                if fields[3] == "0A" and address == any_address:
                    ports.add(int(port, 16))
    return ports


def first_traceback(log: str) -> str:
    """Return the log lines around the first traceback."""
    start = log.index("Traceback")
    return log[max(0, start - 300) : start + 3000]


def resident_bytes(pid: int) -> int:
    """Return a process's resident set size (VmRSS) in bytes."""
    status = Path(f"/proc/{pid}/status").read_text(encoding="ascii")
    match = re.search(r"^VmRSS:\s+(\d+) kB$", status, re.MULTILINE)
    assert match is not None, status
    return int(match.group(1)) * 1024


class Generator:
    """Makes valid, mutated and broken messages for every operation, from a seed.

    Ids that the node handed out (jobs, tasks, attempts) are fed back through
    ``known_ids``, so that some requests get past "not found" into deeper code.
    """

    def __init__(self, rng: random.Random, node_id: str, ports: tuple[int, ...]):
        self.rng = rng
        self.node_id = node_id
        self.ports = ports
        self.sender = "f" * 16 + "".join(rng.choice(HEX) for _ in range(16))
        self.peer_ids = ["".join(rng.choice(HEX) for _ in range(32)) for _ in range(40)]
        self.known_ids: list[str] = []
        self.claim_farm_roles = False
        self.mutations: Counter[str] = Counter()

    # Valid values ---------------------------------------------------------------

    def loopback_address(self) -> str:
        return f"127.200.{self.rng.randrange(256)}.{self.rng.randrange(1, 255)}"

    def value(self, schema: Check, key: str) -> Any:  # noqa: PLR0911
        """Return a random value that passes schema, for the field named key."""
        if key == "address":
            return self.loopback_address()
        if key in PORT_KEYS:
            return self.rng.choice(self.ports)
        if isinstance(schema, Str):
            return self.text(schema, key)
        if isinstance(schema, Int):
            return self.integer(schema)
        if isinstance(schema, Float):
            return self.rng.uniform(max(schema.low, -1e6), min(schema.high, 1e6))
        if isinstance(schema, Bool):
            return self.rng.random() < 0.5
        if isinstance(schema, Bin):
            return self.rng.randbytes(self.rng.randint(0, min(schema.max_len, 64)))
        if isinstance(schema, List):
            count = self.rng.randint(0, min(schema.max_len, 3))
            return [self.value(schema.item, key) for _ in range(count)]
        if isinstance(schema, Optional):
            if self.rng.random() < 0.3:
                return None
            return self.value(schema.inner, key)
        if isinstance(schema, Plain):
            return self.plain(key)
        return self.mapping(schema)

    def mapping(self, schema: Map) -> dict[str, Any]:
        result = {}
        for name, item in schema.fields.items():
            if name in schema.optional and self.rng.random() < 0.5:
                continue
            result[name] = self.value(item, name)
        return result

    def text(self, schema: Str, key: str) -> str:
        rng = self.rng
        if schema.hex and schema.min_len == 32:
            pool = [self.node_id, self.sender, *self.peer_ids]
            return rng.choice(pool)
        if schema.hex:
            return "".join(rng.choice(HEX) for _ in range(schema.min_len))
        if key == "role":
            roles = ["manager:elsewhere", "render-" + rng.choice(HEX)]
            if self.claim_farm_roles:
                roles += FARM_ROLES
            return rng.choice(roles)
        if key.endswith("_id") and self.known_ids and rng.random() < 0.5:
            return rng.choice(self.known_ids)
        low = schema.min_len
        high = min(schema.max_len, 24)
        return "".join(rng.choice(TEXT) for _ in range(rng.randint(low, high)))

    def integer(self, schema: Int) -> int:
        rng = self.rng
        choice = rng.random()
        if choice < 0.15:
            return schema.low
        if choice < 0.3:
            return schema.high
        small = rng.randint(max(schema.low, 0), min(schema.high, 100))
        if choice < 0.8:
            return small
        return rng.randint(schema.low, schema.high)

    def plain(self, key: str, depth: int = 0) -> Any:  # noqa: PLR0911
        if key == "job":
            return self.job()
        rng = self.rng
        kind = rng.randrange(6 if depth < 3 else 4)
        if kind == 0:
            return None
        if kind == 1:
            return rng.randint(-1000, 1000)
        if kind == 2:
            return rng.uniform(-1e3, 1e3)
        if kind == 3:
            return "".join(rng.choice(TEXT) for _ in range(rng.randint(0, 12)))
        if kind == 4:
            return [self.plain("", depth + 1) for _ in range(rng.randint(0, 3))]
        return {
            rng.choice(["frames", "tasks", "mode", "x"]) + str(i): self.plain(
                "", depth + 1
            )
            for i in range(rng.randint(0, 3))
        }

    def job(self) -> dict[str, Any]:
        """Return a small job: a sleep job of at most 3 short tasks, or a render job."""
        rng = self.rng
        requirements: dict[str, Any] = {
            "gpu": "none",
            "gpu_types": [],
            "min_blender": None,
        }
        job: dict[str, Any] = {
            "name": "fuzz " + "".join(rng.choice(TEXT) for _ in range(8)),
            "job_type": "sleep",
            "priority": rng.randint(0, 50),
            "settings": {"tasks": rng.randint(1, 3), "duration": 0.0},
            "requirements": requirements,
        }
        if rng.random() < 0.2:
            job["job_type"] = "blender-render"
            job["settings"] = {
                "blend_sha256": "".join(rng.choice(HEX) for _ in range(64)),
                "blend_size": 1000,
                "blend_name": "fuzz.blend",
                "frames": "1",
                "chunk_size": 1,
                "output_dir": "/nonexistent/fuzz-output",
                "output_name": "f_####",
                "overrides": {},
            }
        if rng.random() < 0.7:
            job["submitter_node"] = self.node_id
        return job

    # Bodies and frames ----------------------------------------------------------

    def body(self, op: str) -> dict[str, Any]:
        body = self.mapping(FUZZ_BODIES[op])
        if op == "client_submit":
            body["blend_path"] = None
        return body

    def message(self) -> tuple[str, list[bytes]]:
        """Return (operation, frames) of the next message to send.

        A bit flip can turn a loopback address into another one, so every frame
        that the node could accept is checked, and a message is made again until
        all of its addresses are loopback ones.
        """
        while True:
            op, frames = self.any_message()
            if all(only_safe_addresses(frame, self.ports) for frame in frames):
                return op, frames
            self.mutations["unsafe_address_redone"] += 1

    def any_message(self) -> tuple[str, list[bytes]]:
        rng = self.rng
        op = rng.choice(OPERATIONS)
        body = self.body(op)
        sender = self.sender
        if op == "heartbeat" and rng.random() < 0.8:
            sender = body["node"]["node_id"]
        request_id = rng.randrange(1, 2**32) if rng.random() < 0.7 else None
        roll = rng.random()
        if roll < VALID_FRACTION:
            self.mutations["valid"] += 1
        elif roll < 1 - FRAME_MUTATION_FRACTION:
            self.mutate_body(body, FUZZ_BODIES[op])
        else:
            envelope = {
                "op": op,
                "v": PROTOCOL_VERSION,
                "from": sender,
                "epoch": None,
                "id": request_id,
                "body": self.make_safe(op, body),
            }
            return op, self.broken_frames(envelope)
        body = self.make_safe(op, body)
        epoch = rng.choice([None, None, 0, 1, rng.randrange(2**53)])
        return op, [pack(op, sender, body, epoch=epoch, request_id=request_id)]

    def make_safe(self, op: str, body: Any) -> Any:
        """Force addresses and ports to unused loopback ones, and keep jobs small.

        Runs after mutation, so no value that could pass the schema is left out.
        """
        force_loopback(body, self.loopback_address, lambda: self.rng.choice(self.ports))
        job = body.get("job") if isinstance(body, dict) else None
        if op in ("client_submit", "submit_job") and isinstance(job, dict):
            cap_job(job, self.node_id)
        blend_path = body.get("blend_path") if isinstance(body, dict) else None
        if op == "client_submit" and isinstance(blend_path, str):
            # A blend file that exists would be copied into the blob store and make
            # the node create the job's output directory; this path never exists.
            body["blend_path"] = "/nonexistent/fuzz.blend"
        return body

    def mutate_body(self, body: dict[str, Any], schema: Map) -> None:
        """Change one field of body (at any depth) so that it breaks its schema."""
        rng = self.rng
        spots = list(walk(body, schema))
        if not spots:
            self.mutations["unknown_field"] += 1
            body["zz_field"] = 1
            return
        container, key, field_schema = rng.choice(spots)
        mutations: list[tuple[str, Callable[[], Any]]] = [
            ("wrong_type", lambda: wrong_type(rng, field_schema)),
            ("bytes_for_str", lambda: str(container[key]).encode()[:300] or b"\xff"),
            ("nan", lambda: rng.choice([math.nan, math.inf, -math.inf])),
            ("huge_int", lambda: rng.choice([2**64 - 1, -(2**63), 2**53 + 1])),
            ("out_of_range", lambda: out_of_range(rng, field_schema)),
            ("over_long", lambda: over_long(rng, field_schema)),
            ("plain_bomb", lambda: plain_bomb(rng)),
        ]
        if isinstance(container, dict):
            mutations.append(("missing_field", lambda: DROP))
            mutations.append(("unknown_field", lambda: UNKNOWN))
        name, make = rng.choice(mutations)
        self.mutations[name] += 1
        replacement = make()
        if replacement is DROP:
            del container[key]
        elif replacement is UNKNOWN:
            container["zz_" + str(rng.randrange(1000))] = rng.choice([1, "x", None])
        else:
            container[key] = replacement

    def broken_frames(self, envelope: dict[str, Any]) -> list[bytes]:
        """Return frames made from envelope that the node must reject."""
        rng = self.rng
        good = msgpack.packb(envelope, use_bin_type=True)
        kinds: list[tuple[str, Callable[[], list[bytes]]]] = [
            ("bit_flip", lambda: [flip_bits(rng, good)]),
            ("truncated", lambda: [good[: rng.randrange(len(good))]]),
            ("trailing_bytes", lambda: [good + rng.randbytes(rng.randint(1, 8))]),
            ("random_bytes", lambda: [rng.randbytes(rng.randint(0, 300))]),
            ("empty_frame", lambda: [b""]),
            ("multi_frame", lambda: [good, *[good] * rng.randint(1, 3)]),
            ("multi_frame_empty", lambda: [b"", good]),
            ("newer_version", lambda: [repack(envelope, v=PROTOCOL_VERSION + 1)]),
            ("huge_version", lambda: [repack(envelope, v=2**31 + 1)]),
            ("negative_version", lambda: [repack(envelope, v=-1)]),
            ("unknown_op", lambda: [repack(envelope, op="fuzz_" + rng.choice(HEX))]),
            ("long_op", lambda: [repack(envelope, op="x" * 41)]),
            ("op_not_str", lambda: [repack(envelope, op=7)]),
            ("unknown_envelope_key", lambda: [repack(envelope, extra=1)]),
            ("bytes_key", lambda: [repack_bytes_key(envelope)]),
            ("bad_sender", lambda: [repack(envelope, **{"from": "Z" * 32})]),
            ("bad_epoch", lambda: [repack(envelope, epoch=2**53 + 1)]),
            ("bad_request_id", lambda: [repack(envelope, id=-1)]),
            ("bool_request_id", lambda: [repack(envelope, id=True)]),
            ("not_a_map", lambda: [msgpack.packb([1, "op", None])]),
            ("int_keys", lambda: [msgpack.packb({1: 2, "op": "heartbeat"})]),
            ("ext_type", lambda: [msgpack.packb(msgpack.ExtType(5, b"xyz"))]),
            ("invalid_utf8", lambda: [with_body(envelope, b"\xa3\xff\xfe\xfd")]),
            ("deep_nesting", lambda: [with_body(envelope, deep_array(600))]),
            ("wide_map", lambda: [with_body(envelope, wide_map(1001))]),
        ]
        # Frames of 64 KiB and more are sent less often, to keep the rate up.
        large: list[tuple[str, Callable[[], list[bytes]]]] = [
            ("deep_nesting_100k", lambda: [with_body(envelope, deep_array(100_000))]),
            ("long_array", lambda: [with_body(envelope, long_array(100_001))]),
            ("long_str", lambda: [with_body(envelope, long_str(64 * 1024 + 1))]),
        ]
        if rng.random() < 0.05:
            kinds = large
        if rng.random() < 0.0003:
            kinds = [("near_frame_limit", lambda: [near_limit_frame(envelope)])]
        name, make = rng.choice(kinds)
        self.mutations[name] += 1
        return make()


# Every operation, and one that no port serves.
FUZZ_BODIES: dict[str, Map] = {**BODIES, "fuzz_unknown": Map({})}
OPERATIONS = sorted(FUZZ_BODIES)
DROP = object()
UNKNOWN = object()


def force_loopback(
    value: Any, address: Callable[[], str], port: Callable[[], int]
) -> None:
    """Replace every address and port that could pass the schema, at any depth."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "address" and isinstance(item, str) and 7 <= len(item) <= 45:
                value[key] = address()
            elif key in PORT_KEYS and isinstance(item, int) and 1 <= item <= 65535:
                value[key] = port()
            else:
                force_loopback(item, address, port)
    elif isinstance(value, list):
        for item in value:
            force_loopback(item, address, port)


SAFE_NETWORK = ipaddress.IPv4Network("127.200.0.0/16")


def only_safe_addresses(frame: bytes, ports: tuple[int, ...]) -> bool:
    """Return False when frame decodes and names an address or port not allowed."""
    try:
        value = decode(frame)
    except ProtocolError:
        return True
    unsafe: list[object] = []

    def visit(item: Any) -> None:
        if isinstance(item, dict):
            for key, inner in item.items():
                if is_unsafe(key, inner, ports):
                    unsafe.append(inner)
                visit(inner)
        elif isinstance(item, list):
            for inner in item:
                visit(inner)

    visit(value)
    return not unsafe


def is_safe_address(text: str) -> bool:
    """Return True for a dotted IPv4 address in 127.200.0.0/16 (no name lookup)."""
    try:
        address = ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return address in SAFE_NETWORK and str(address) == text


def is_unsafe(key: object, value: object, ports: tuple[int, ...]) -> bool:
    """Return True for an address or port that the node might connect to."""
    if key == "address":
        return isinstance(value, str) and not is_safe_address(value)
    if key in PORT_KEYS:
        return isinstance(value, int) and value not in ports and 1 <= value <= 65535
    return False


def cap_job(job: dict[str, Any], node_id: str) -> None:
    """Keep a job that might be valid small: at most 3 tasks of at most 10 ms."""
    settings = job.get("settings")
    if isinstance(settings, dict):
        tasks = settings.get("tasks")
        if isinstance(tasks, int) and tasks > 3:
            settings["tasks"] = 3
        duration = settings.get("duration")
        if isinstance(duration, int | float) and not 0 <= duration <= 0.01:
            settings["duration"] = 0.0
        if job.get("job_type") == "blender-render":
            settings["frames"] = "1"
            # The node has no blob of this hash, so the render fails at once.
            job["submitter_node"] = node_id
    priority = job.get("priority")
    if isinstance(priority, int) and priority > 50:
        job["priority"] = 50


def walk(body: Any, schema: Check) -> Any:
    """Yield (container, key, schema) for every field of body, at any depth."""
    if isinstance(schema, Optional):
        schema = schema.inner
    if isinstance(schema, Map) and isinstance(body, dict):
        for key, item in body.items():
            item_schema = schema.fields.get(key)
            if item_schema is None:
                continue
            yield body, key, item_schema
            yield from walk(item, item_schema)
    elif isinstance(schema, List) and isinstance(body, list):
        for index, item in enumerate(body):
            yield body, index, schema.item
            yield from walk(item, schema.item)


def wrong_type(rng: random.Random, schema: Check) -> Any:
    candidates: list[Any] = [None, 1, -1, 1.5, "text", b"bytes", True, [], {}, [1]]
    if isinstance(schema, Optional):
        candidates.remove(None)
    return rng.choice(candidates)


def out_of_range(rng: random.Random, schema: Check) -> Any:
    if isinstance(schema, Optional):
        schema = schema.inner
    if isinstance(schema, Int):
        return rng.choice([schema.low - 1, schema.high + 1, 2**63, -(2**63)])
    if isinstance(schema, Float):
        return rng.choice([schema.low - 1.0, schema.high + 1.0, 1e308, -1e308])
    if isinstance(schema, Str):
        shorter = max(schema.min_len - 1, 0)
        hex_break = "g" * schema.min_len if schema.hex else "x" * shorter
        return hex_break if schema.min_len else "x" * (schema.max_len + 1)
    return wrong_type(rng, schema)


def over_long(rng: random.Random, schema: Check) -> Any:
    if isinstance(schema, Optional):
        schema = schema.inner
    if isinstance(schema, Str):
        return "x" * rng.choice([schema.max_len + 1, 64 * 1024 + 1])
    if isinstance(schema, List):
        return [None] * (schema.max_len + 1)
    if isinstance(schema, Bin) and (schema.max_len < 65536 or rng.random() < 0.01):
        return bytes(schema.max_len + 1)
    if isinstance(schema, Plain):
        return [0] * (schema.max_items + 1)
    return "x" * 5000


def plain_bomb(rng: random.Random) -> Any:
    """Return a nested tree past the Plain limits of depth or item count."""
    kind = rng.randrange(3)
    if kind == 0:
        nested: Any = 0
        for _ in range(rng.choice([5, 9, 100, 400])):
            nested = [nested]
        return nested
    if kind == 1:
        return {f"k{i}": {"a": [1, 2, {"b": None}]} for i in range(300)}
    return [[i, [i, {"x": [i]}]] for i in range(2000)]


def flip_bits(rng: random.Random, frame: bytes) -> bytes:
    data = bytearray(frame)
    for _ in range(rng.randint(1, 8)):
        index = rng.randrange(len(data))
        data[index] ^= 1 << rng.randrange(8)
    return bytes(data)


def repack(envelope: dict[str, Any], **changes: Any) -> bytes:
    data: bytes = msgpack.packb({**envelope, **changes}, use_bin_type=True)
    return data


def repack_bytes_key(envelope: dict[str, Any]) -> bytes:
    """Return envelope's frame with one more key, a byte string."""
    mixed: dict[str | bytes, Any] = dict(envelope.items())
    mixed[b"op"] = 1
    data: bytes = msgpack.packb(mixed, use_bin_type=True)
    return data


def with_body(envelope: dict[str, Any], raw_body: bytes) -> bytes:
    """Return envelope's frame with its body replaced by raw msgpack bytes."""
    head = {k: v for k, v in envelope.items() if k != "body"}
    packed: bytes = msgpack.packb(head, use_bin_type=True)
    assert 0x80 <= packed[0] <= 0x8E, "the envelope is a fixmap"
    body_key: bytes = msgpack.packb("body")
    return bytes([packed[0] + 1]) + packed[1:] + body_key + raw_body


def deep_array(depth: int) -> bytes:
    """Return an array nested deeper than msgpack's packer allows (512)."""
    return b"\x91" * depth + b"\xc0"


def wide_map(count: int) -> bytes:
    header = b"\xde" + count.to_bytes(2, "big")
    items = b"".join(msgpack.packb(f"k{i}") + b"\xc0" for i in range(count))
    return header + items


def long_array(count: int) -> bytes:
    return b"\xdd" + count.to_bytes(4, "big") + b"\xc0" * count


def long_str(length: int) -> bytes:
    return b"\xdb" + length.to_bytes(4, "big") + b"x" * length


def near_limit_frame(envelope: dict[str, Any]) -> bytes:
    """Return a frame just under the frame limit, with an over-long binary body."""
    body = b"\xc6" + (MAX_BIN_LEN + 1).to_bytes(4, "big") + bytes(MAX_BIN_LEN + 1)
    frame = with_body(envelope, body)
    assert len(frame) < MAX_FRAME_BYTES
    return frame


@dataclass
class Port:
    """One fuzzing DEALER socket and what came back on it."""

    name: str
    sock: zmq.asyncio.Socket
    sent: int = 0
    dropped: int = 0
    replies: Counter[str] = field(default_factory=Counter)
    barriers: dict[int, asyncio.Future[None]] = field(default_factory=dict)
    barrier_timeouts: int = 0


async def drain(port: Port, generator: Generator) -> None:
    """Read every reply of a port: count error codes, learn ids, release barriers."""
    while True:
        frame = await port.sock.recv()
        try:
            raw = decode(frame)
        except ProtocolError:
            port.replies["undecodable"] += 1
            continue
        body = raw.get("body")
        request_id = raw.get("id")
        if isinstance(request_id, int) and request_id in port.barriers:
            future = port.barriers.pop(request_id)
            if not future.done():
                future.set_result(None)
            continue
        if raw.get("op") == "error" and isinstance(body, dict):
            port.replies[f"error {body.get('code')}"] += 1
        else:
            port.replies[str(raw.get("op"))] += 1
        if isinstance(body, dict):
            learn_ids(body.get("result"), generator.known_ids)


def learn_ids(value: Any, known: list[str], depth: int = 0) -> None:
    """Collect the ids that a reply names, at most 500."""
    if depth > 4 or len(known) >= 500:
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if key in ("id", "job_id", "task_id", "attempt_id", "worker_id"):
                if isinstance(item, str) and 0 < len(item) <= 64 and item not in known:
                    known.append(item)
            else:
                learn_ids(item, known, depth + 1)
    elif isinstance(value, list):
        for item in value[:20]:
            learn_ids(item, known, depth + 1)


async def barrier(port: Port, request_id: int, timeout: float) -> bool:
    """Wait until the node has replied to every frame sent before this one on port.

    A ROUTER reads one peer's frames in order, and a frame with an unknown operation
    and a request id gets its error reply from the receiving loop itself.
    """
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    port.barriers[request_id] = future
    frame = pack("fuzz_barrier", "0" * 32, {}, request_id=request_id)
    try:
        await asyncio.wait_for(port.sock.send(frame), timeout)
        await asyncio.wait_for(future, timeout)
    except TimeoutError:
        port.barriers.pop(request_id, None)
        port.barrier_timeouts += 1
        return False
    return True


def route(rng: random.Random, op: str) -> str:
    """Return the port that serves op most of the time, else any port."""
    if rng.random() < 0.25:
        return rng.choice(["node", "manager", "server"])
    if op in MANAGER_OPS and (op not in SERVER_OPS or rng.random() < 0.5):
        return "manager"
    if op in SERVER_OPS:
        return "server"
    if op in NODE_OPS:
        return "node"
    return rng.choice(["node", "manager", "server"])


async def fuzz(
    ports: dict[str, Port],
    generator: Generator,
    count: int,
    next_barrier: list[int],
    require_barriers: bool,
) -> None:
    """Send count messages, with a barrier on each port every BARRIER_EVERY."""
    rng = generator.rng
    since_barrier = 0
    for _ in range(count):
        op, frames = generator.message()
        port = ports[route(rng, op)]
        future = port.sock.send_multipart(frames, flags=zmq.DONTWAIT)
        assert isinstance(future, asyncio.Future)
        if future.done() and future.exception() is not None:
            port.dropped += 1
        else:
            port.sent += 1
        since_barrier += 1
        if since_barrier < BARRIER_EVERY:
            continue
        since_barrier = 0
        for name, each in ports.items():
            # While roles move, only the node port is sure to be bound.
            if not require_barriers and name != "node":
                continue
            next_barrier[0] += 1
            answered = await barrier(each, next_barrier[0], BARRIER_TIMEOUT)
            assert answered, f"the {name} port stopped answering"


def open_port(ctx: zmq.asyncio.Context, name: str, endpoint: str) -> Port:
    sock = ctx.socket(zmq.DEALER)
    configure(sock)
    secure_client(sock, ctx)
    # Nothing queues while a role port is unbound, so such messages count as dropped.
    sock.setsockopt(zmq.IMMEDIATE, 1)
    sock.setsockopt(zmq.RECONNECT_IVL, 100)
    sock.connect(endpoint)
    return Port(name, sock)


async def wait_connected(port: Port) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if await barrier(port, BARRIER_ID_BASE - 1 - len(port.name), 1.0):
            return
    raise AssertionError(f"the {port.name} port did not answer")


async def render_two_frames(farm: LocalFarm, tmp_path: Path) -> None:
    blend = tmp_path / "scene.blend"
    make_demo_scene(blend, frames=2)
    output = tmp_path / "render"
    job, _warnings = build_render_job(
        blend=blend,
        frames="1-2",
        chunk=1,
        output=str(output / "frame_####"),
        cwd=tmp_path,
        priority=100,
    )
    body = {"job": job, "blend_path": str(blend)}
    result = await farm.call(0, "client_submit", body)
    view = await farm.wait_for_job(result["job_id"], timeout=240)
    assert view["job"]["status"] == "completed", farm.logs()
    for frame in (1, 2):
        info = validate_output(str(output / f"frame_{frame:04d}.png"))
        assert info.format == "PNG"


async def test_node_survives_fuzzed_messages(tmp_path: Path) -> None:
    ports_free = tuple(p for p in CANDIDATE_PORTS if p not in wildcard_ports())
    assert ports_free, f"every port of {CANDIDATE_PORTS} has a wildcard listener"
    with LocalFarm(tmp_path / "farm", 1, mdns=False) as farm:
        await farm.wait_for_roles()
        node = farm.nodes[0]
        assert node.process is not None
        pid = node.process.pid
        node_id = (node.data_dir / "node-id").read_text().strip()
        generator = Generator(random.Random(SEED), node_id, ports_free)
        ctx = farm_context(load_farm_key(node.data_dir))
        ports = {
            name: open_port(ctx, name, f"tcp://{node.address}:{number}")
            for name, number in (("node", 7776), ("manager", 7777), ("server", 9999))
        }
        readers = [
            asyncio.create_task(drain(port, generator)) for port in ports.values()
        ]
        next_barrier = [BARRIER_ID_BASE]
        try:
            for port in ports.values():
                await wait_connected(port)
            # A warm-up round loads every code path, and frames near the size
            # limit raise the allocator's high-water mark, so the first reading of
            # the resident size already counts what any later frame can need.
            await fuzz(ports, generator, 5_000, next_barrier, True)
            for port in ports.values():
                envelope = {
                    "op": "blob_data",
                    "v": PROTOCOL_VERSION,
                    "from": generator.sender,
                }
                for _ in range(3):
                    await port.sock.send(near_limit_frame(envelope))
                next_barrier[0] += 1
                assert await barrier(port, next_barrier[0], BARRIER_TIMEOUT)
            await asyncio.sleep(6)
            rss_before = resident_bytes(pid)
            started = time.monotonic()
            half = STABLE_MESSAGES // 2
            await fuzz(ports, generator, half, next_barrier, True)
            rss_middle = resident_bytes(pid)
            await fuzz(ports, generator, STABLE_MESSAGES - half, next_barrier, True)
            rss_stable = resident_bytes(pid)
            stable_seconds = time.monotonic() - started
            stable_sent = {name: port.sent for name, port in ports.items()}
            generator.claim_farm_roles = True
            await fuzz(ports, generator, ELECTION_MESSAGES, next_barrier, False)
            seconds = time.monotonic() - started
        finally:
            for task in readers:
                task.cancel()
            for task in readers:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            for port in ports.values():
                port.sock.close(0)
            ctx.term()
        sent = sum(port.sent for port in ports.values())
        report = {
            "sent": sent,
            "rate_per_s": round(sent / seconds),
            "stable_rate_per_s": round(sum(stable_sent.values()) / stable_seconds),
            "stable_sent_by_port": stable_sent,
            "sent_by_port": {n: p.sent for n, p in ports.items()},
            "dropped_by_port": {n: p.dropped for n, p in ports.items()},
            "barrier_timeouts": {n: p.barrier_timeouts for n, p in ports.items()},
            "replies": {n: dict(p.replies) for n, p in ports.items()},
            "mutations": dict(generator.mutations),
            "known_ids": len(generator.known_ids),
        }
        print(f"fuzz report: {report}")
        assert sent >= 100_000, report
        for name in ("node", "manager", "server"):
            assert stable_sent[name] > 10_000, report

        # Handlers may still be waiting on timeouts (15 s for a server call).
        await asyncio.sleep(16)
        assert node.process.poll() is None, farm.logs()
        rss_after = resident_bytes(pid)
        growth = rss_after - rss_before
        print(
            f"resident size: {rss_before} -> {rss_middle} (half) -> {rss_stable}"
            f" (stable phase) -> {rss_after} bytes"
        )
        assert growth < RSS_GROWTH_LIMIT, f"grew by {growth} bytes; {report}"
        # Bounded tables fill up in the first half; the second half of the same
        # traffic must not keep growing at the same pace.
        late_growth = rss_stable - rss_middle
        assert late_growth < SECOND_HALF_GROWTH_LIMIT, f"second half grew {late_growth}"

        status = await farm.call(0, "client_status", {})
        assert status["node_id"] == node_id
        await farm.wait_for_roles(timeout=60)
        await render_two_frames(farm, tmp_path)

        # The log is checked last, so that a failure here still means that the
        # node survived and rendered.
        log = node.log_text()
        assert "Traceback" not in log, first_traceback(log)
        failed = HANDLER_FAILED.search(log)
        assert failed is None, (
            log[max(0, failed.start() - 500) :][:3000] if failed else ""
        )
