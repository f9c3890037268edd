"""Every message type that nodes exchange, with one schema each.

An envelope is a msgpack map::

    {"op": str, "v": int, "from": node id, "epoch": int | None, "id": int | None,
     "body": {...}}

``epoch`` is set by role holders (manager, server) and checked by receivers. ``id``
correlates a request with its ``reply`` or ``error``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flamenco_p2p.errors import ProtocolError, VersionMismatch
from flamenco_p2p.protocol.codec import MAX_BIN_LEN, decode, encode
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

PROTOCOL_VERSION = 2

NODE_ID = Str(max_len=32, min_len=32, hex=True)
ITEM_ID = Str(max_len=64, min_len=1)
SHA256 = Str(max_len=64, min_len=64, hex=True)
ROLE = Str(max_len=80, min_len=1)
ADDRESS = Str(max_len=45, min_len=7)
PORT = Int(1, 65535)
EPOCH = Int(0, 2**53)
FRAME = Int(-(2**31), 2**31 - 1)
SHORT = Str(max_len=200)
ERROR_TEXT = Str(max_len=4000)

CAPABILITIES = Map(
    {
        "cpu_cores": Int(0, 4096),
        "gpu_types": List(Str(max_len=16), max_len=8),
        "blender_version": Optional(Str(max_len=40)),
        "tags": List(Str(max_len=64), max_len=32),
    }
)
RANK = Map({"priority": Int(0, 1000), "freshness": Int(0, 2**53), "node_id": NODE_ID})
ROLE_CLAIM = Map({"role": ROLE, "epoch": EPOCH, "holder": NODE_ID})
PEER_REF = Map({"node_id": NODE_ID, "address": ADDRESS, "node_port": PORT})
NODE_INFO = Map(
    {
        "node_id": NODE_ID,
        "site": SHORT,
        "address": ADDRESS,
        "node_port": PORT,
        "manager_port": PORT,
        "server_port": PORT,
        "can_manage": Bool(),
        "can_serve": Bool(),
        "rank": RANK,
        "worker_slots": Int(0, 64),
        "capabilities": CAPABILITIES,
        "started": Float(0, 1e12),
    }
)
OUTPUT = Map(
    {
        "frame": FRAME,
        "name": Str(max_len=255, min_len=1),
        "sha256": SHA256,
        "size": Int(1, 2**40),
    }
)
ASSIGNMENT = Map(
    {
        "job_id": ITEM_ID,
        "task_id": ITEM_ID,
        "attempt_id": ITEM_ID,
        "job_type": SHORT,
        "frames": List(FRAME, max_len=10_000),
        "payload": Plain(),
        "settings": Plain(),
        "worker_id": ITEM_ID,
        "submitter_node": NODE_ID,
    }
)
WORKER = Map(
    {
        "worker_id": ITEM_ID,
        "node_id": NODE_ID,
        "site": SHORT,
        "capabilities": CAPABILITIES,
    }
)

# Schemas of message bodies, by operation name.
RUNNING_ATTEMPT = Map({"worker_id": ITEM_ID, "attempt_id": ITEM_ID})
# One database row of a replicated table: column names to scalar values.
DB_ROW = Plain(max_items=40, max_depth=2)

BODIES: dict[str, Map] = {
    # Membership and election, on every node's node port.
    "heartbeat": Map(
        {
            "node": NODE_INFO,
            "peers": List(PEER_REF, max_len=512),
            "claims": List(ROLE_CLAIM, max_len=64),
            # The sender's wall clock (Unix time, UTC), only to warn of skew.
            "wall_clock": Float(0, 1e11),
        },
        optional=frozenset({"wall_clock"}),
    ),
    "leaving": Map({"reason": SHORT}),
    "vote_request": Map({"role": ROLE, "epoch": EPOCH, "rank": RANK}),
    "vote": Map(
        {"role": ROLE, "epoch": EPOCH, "granted": Bool(), "known_epoch": EPOCH}
    ),
    # Commands from the CLI to the local node.
    "client_submit": Map(
        {"job": Plain(max_items=400), "blend_path": Optional(Str(max_len=4096))}
    ),
    "client_status": Map({}),
    "client_job": Map({"job_id": ITEM_ID}),
    "client_cancel": Map({"job_id": ITEM_ID}),
    "client_task_log": Map({"task_id": ITEM_ID}),
    "client_thumbnail": Map({"job_id": ITEM_ID}),
    # Files: blobs travel worker <- manager <- submitter, outputs worker -> submitter.
    "blob_get": Map(
        {
            "sha256": SHA256,
            "offset": Int(0, 2**40),
            "length": Int(1, MAX_BIN_LEN),
            "submitter": NODE_ID,
        },
        optional=frozenset({"submitter"}),
    ),
    "output_put": Map(
        {
            "job_id": ITEM_ID,
            "attempt_id": ITEM_ID,
            "name": Str(max_len=255, min_len=1),
            "offset": Int(0, 2**40),
            "data": Bin(MAX_BIN_LEN),
            "last": Bool(),
            "sha256": SHA256,
            "size": Int(1, 2**40),
        }
    ),
    # Worker <-> manager, on the manager port.
    # "interrupted": attempts that were running when the worker's node last
    # stopped or died, so that the manager requeues them at once.
    "worker_hello": Map(
        {
            "worker": WORKER,
            "slots": Int(1, 64),
            "running": List(ITEM_ID, max_len=64),
            "interrupted": List(ITEM_ID, max_len=64),
        },
        optional=frozenset({"interrupted"}),
    ),
    "worker_heartbeat": Map({"worker_id": ITEM_ID}),
    "worker_leaving": Map({"worker_id": ITEM_ID}),
    "worker_reset": Map({"worker_id": ITEM_ID}),
    "task_assign": Map({"assignment": ASSIGNMENT}),
    # "reason": "stale" when the attempt is no longer the task's current one; the
    # worker then stops it and reports nothing.
    "task_cancel": Map(
        {"attempt_id": ITEM_ID, "reason": SHORT}, optional=frozenset({"reason"})
    ),
    "task_progress": Map(
        {
            "attempt_id": ITEM_ID,
            "fraction": Float(0, 1),
            "frame": Optional(FRAME),
            "text": Str(max_len=400),
        }
    ),
    "task_log": Map(
        {"attempt_id": ITEM_ID, "lines": List(Str(max_len=2000), max_len=200)}
    ),
    # Results name the worker slot, so that a new manager finds it.
    "task_done": Map(
        {
            "attempt_id": ITEM_ID,
            "outputs": List(OUTPUT, max_len=10_000),
            "worker_id": ITEM_ID,
        },
        optional=frozenset({"worker_id"}),
    ),
    "task_failed": Map(
        {"attempt_id": ITEM_ID, "error": ERROR_TEXT, "worker_id": ITEM_ID},
        optional=frozenset({"worker_id"}),
    ),
    "task_canceled": Map(
        {"attempt_id": ITEM_ID, "worker_id": ITEM_ID},
        optional=frozenset({"worker_id"}),
    ),
    # Manager <-> server, and forwarded client requests, on the server port.
    "manager_hello": Map(
        {"site": SHORT, "running": List(RUNNING_ATTEMPT, max_len=4096)},
        optional=frozenset({"running"}),
    ),
    "attempts_running": Map({"running": List(RUNNING_ATTEMPT, max_len=4096)}),
    "attempts_lost": Map(
        {
            "worker_id": ITEM_ID,
            "attempt_ids": List(ITEM_ID, max_len=64),
            "reason": SHORT,
        }
    ),
    "want_task": Map({"worker": WORKER}),
    "withdraw_worker": Map({"worker_id": ITEM_ID}),
    "worker_lost": Map({"worker_id": ITEM_ID, "reason": SHORT}),
    "task_result": Map(
        {
            "attempt_id": ITEM_ID,
            "status": Str(max_len=16),
            "outputs": List(OUTPUT, max_len=10_000),
            "error": ERROR_TEXT,
            "worker": Optional(WORKER),
        }
    ),
    "assign": Map({"assignment": ASSIGNMENT}),
    "cancel_attempt": Map({"attempt_id": ITEM_ID, "worker_id": ITEM_ID}),
    "submit_job": Map(
        {"job": Plain(max_items=400), "job_id": Optional(Str(max_len=32, hex=True))},
        optional=frozenset({"job_id"}),
    ),
    "get_job": Map({"job_id": ITEM_ID}),
    "list_jobs": Map({"limit": Int(1, 10_000)}),
    "cancel_job": Map({"job_id": ITEM_ID}),
    "get_task_log": Map({"task_id": ITEM_ID}),
    # Forwarded by the HTTP API of any node.
    "job_page": Map(
        {
            "limit": Int(1, 1000),
            "offset": Int(0, 2**53),
            "statuses": List(Str(max_len=20), max_len=16),
            "query": Str(max_len=200),
        }
    ),
    "task_page": Map(
        {
            "job_id": ITEM_ID,
            "limit": Int(1, 1000),
            "offset": Int(0, 2**53),
            "statuses": List(Str(max_len=20), max_len=16),
        }
    ),
    "get_task": Map({"task_id": ITEM_ID}),
    "task_log_lines": Map(
        {
            "task_id": ITEM_ID,
            "attempt_id": Optional(ITEM_ID),
            "after": Int(0, 2**53),
            "limit": Int(1, 10_000),
            "tail": Optional(Int(0, 10_000)),
        }
    ),
    "farm_summary": Map({}),
    "job_control": Map(
        {
            "job_id": ITEM_ID,
            "action": Str(max_len=20),
            "scope": Str(max_len=20),
            "priority": Int(0, 100),
        },
        optional=frozenset({"scope", "priority"}),
    ),
    "requeue_task": Map({"task_id": ITEM_ID}),
    "events_pull": Map({"after": Int(0, 2**53), "wait": Float(0, 60)}),
    # Standby <-> server, on the server port: the change log and its snapshots.
    "repl_pull": Map(
        {
            "after": Int(0, 2**53),
            "epoch": EPOCH,
            "holder": Str(max_len=32),
            "wait": Float(0, 10),
        }
    ),
    "repl_snapshot": Map({}),
    "repl_merge": Map(
        {
            "job": DB_ROW,
            "tasks": List(DB_ROW, max_len=1000),
            "attempts": List(DB_ROW, max_len=10_000),
            "blocklist": List(DB_ROW, max_len=10_000),
        }
    ),
    # Replies to any request.
    "reply": Map({"result": Plain(max_items=200_000, max_depth=8)}),
    "blob_data": Map({"size": Int(0, 2**40), "data": Bin(MAX_BIN_LEN)}),
    "error": Map(
        {"code": Str(max_len=40), "message": ERROR_TEXT, "field": Optional(SHORT)}
    ),
}

ENVELOPE_KEYS = frozenset({"op", "v", "from", "epoch", "id", "body"})


@dataclass(frozen=True, slots=True)
class Message:
    """A decoded, validated message."""

    op: str
    sender: str
    body: dict[str, Any] = field(default_factory=dict)
    epoch: int | None = None
    request_id: int | None = None
    version: int = PROTOCOL_VERSION
    # The IP address the message came from, when the socket reports it.
    peer_address: str | None = None


def pack(
    op: str,
    sender: str,
    body: dict[str, Any],
    *,
    epoch: int | None = None,
    request_id: int | None = None,
) -> bytes:
    """Encode a message; the body is not checked here (tests check the senders)."""
    envelope = {
        "op": op,
        "v": PROTOCOL_VERSION,
        "from": sender,
        "epoch": epoch,
        "id": request_id,
        "body": body,
    }
    return encode(envelope)


def unpack(frame: bytes, allowed: frozenset[str] | None = None) -> Message:
    """Decode and validate one frame; raises ProtocolError naming the bad field."""
    raw = decode(frame)
    unknown = [k for k in raw if k not in ENVELOPE_KEYS]
    if unknown:
        raise ProtocolError(
            f"unknown envelope field {str(unknown[0])[:40]!r}", "envelope"
        )
    version = Int(0, 2**31).check("v", raw.get("v"))
    op = Str(max_len=40, min_len=1).check("op", raw.get("op"))
    if version > PROTOCOL_VERSION:
        raise VersionMismatch(
            f"peer speaks protocol version {version}, this node speaks"
            f" {PROTOCOL_VERSION}; upgrade this node",
            "v",
        )
    schema = BODIES.get(op)
    if schema is None or (allowed is not None and op not in allowed):
        raise ProtocolError(f"unknown operation {op!r}", "op")
    sender = NODE_ID.check("from", raw.get("from"))
    epoch = Optional(EPOCH).check("epoch", raw.get("epoch"))
    request_id = Optional(Int(0, 2**63)).check("id", raw.get("id"))
    body = schema.check("", raw.get("body"))
    return Message(op, sender, body, epoch, request_id, version)


def validate_body(op: str, body: dict[str, Any]) -> dict[str, Any]:
    """Check a body against its schema (used by senders in tests)."""
    schema: Check = BODIES[op]
    result: dict[str, Any] = schema.check("", body)
    return result
