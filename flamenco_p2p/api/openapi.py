"""The OpenAPI 3.1 document of the HTTP API that every node serves.

docs/http-api.md describes the API in prose, and this module describes it for
machines. Run ``python -m flamenco_p2p.api.openapi > flamenco_p2p/api/openapi.json``
after a change to regenerate the copy kept in the repository. tests/test_openapi.py
checks that the copy matches, that the document is valid OpenAPI 3.1, and that a
live node's responses conform to it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from flamenco_p2p.frames import MAX_FRAME, MAX_FRAMES, MAX_SPEC_LENGTH, MIN_FRAME
from flamenco_p2p.jobs.spec import (
    DEVICES,
    ENGINES,
    GPU_MODES,
    GPU_TYPES,
    JOB_TYPES,
    MAX_CHUNK_SIZE,
    MAX_NAME_LENGTH,
    MAX_PATH_LENGTH,
    MAX_SLEEP_SECONDS,
)
from flamenco_p2p.jobs.status import AttemptStatus, JobStatus, TaskStatus
from flamenco_p2p.membership import PeerState

Schema = dict[str, Any]

API_VERSION = "1.0.0"

MAX_JOB_PAGE = 1000
MAX_TASK_PAGE = 1000
MAX_LOG_PAGE = 10_000
MAX_LOG_TAIL = 10_000
MAX_OFFSET = 2**53
"""Largest offset or line id a query accepts."""
MAX_STATUS_FILTERS = 16
MAX_QUERY_LENGTH = 200
MAX_HASHES = 1000
MAX_PATH_ID_LENGTH = 64
"""Maximum length of a job or task id in a path. Longer ids get 400."""

ERROR_CODES = {
    400: ("invalid", "A parameter or body field is invalid, and `field` names it."),
    401: ("unauthorized", "The farm token is missing or wrong."),
    404: ("not_found", "No such job, task, blob or route."),
    409: ("conflict", "The job or task is in a state that forbids the change."),
    413: ("too_large", "The body is over its limit (blobs: 4 GiB, JSON: 1 MiB)."),
    503: (
        "unavailable",
        "The farm has no reachable server yet, or the node that holds the data"
        " is unreachable. Retry later.",
    ),
}
"""Error status: (the `code` in the body, the response's description)."""

_RESPONSE_NAMES = {
    400: "BadRequest",
    401: "Unauthorized",
    404: "NotFound",
    409: "Conflict",
    413: "TooLarge",
    503: "Unavailable",
}

# Reading calls need no token, but every POST, PUT and DELETE needs one.
_SECURED_METHODS = frozenset({"post", "put", "delete"})


# Schema building blocks ----------------------------------------------------


def ref(name: str) -> Schema:
    """Return a reference to the component schema ``name``."""
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: Schema) -> Schema:
    """Return a schema that also accepts null."""
    if "type" in schema and "$ref" not in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        return {**schema, "type": [*types, "null"]}
    return {"anyOf": [schema, {"type": "null"}]}


def obj(
    properties: dict[str, Schema],
    *,
    optional: Iterable[str] = (),
    description: str | None = None,
) -> Schema:
    """Return a closed object schema whose properties are required unless optional."""
    skipped = set(optional)
    unknown = skipped - set(properties)
    if unknown:
        raise ValueError(
            f"optional lists properties that do not exist: {sorted(unknown)}"
        )
    schema: Schema = {"type": "object"}
    if description:
        schema["description"] = description
    schema["properties"] = properties
    required = [name for name in properties if name not in skipped]
    if required:
        schema["required"] = required
    schema["additionalProperties"] = False
    return schema


def counts_by(keys: Sequence[str], description: str) -> Schema:
    """Return an object with an integer count of 0 or more for every key."""
    return obj(
        {key: {"type": "integer", "minimum": 0} for key in keys},
        description=description,
    )


def count_map(key_schema: str | None, description: str) -> Schema:
    """Return an object of counts of 0 or more, keyed by values of key_schema."""
    schema: Schema = {"type": "object", "description": description}
    if key_schema is not None:
        schema["propertyNames"] = ref(key_schema)
    schema["additionalProperties"] = integer(0)
    return schema


def integer(
    minimum: int | None = None, maximum: int | None = None, **extra: Any
) -> Schema:
    """Return an integer schema with optional bounds."""
    schema: Schema = {"type": "integer"}
    if minimum is not None:
        schema["minimum"] = minimum
    if maximum is not None:
        schema["maximum"] = maximum
    return {**schema, **extra}


def array(items: Schema, **extra: Any) -> Schema:
    """Return an array schema."""
    return {"type": "array", "items": items, **extra}


def enum(values: Iterable[str], description: str | None = None) -> Schema:
    """Return a string schema that accepts only values."""
    schema: Schema = {"type": "string", "enum": list(values)}
    if description:
        schema["description"] = description
    return schema


def _progress() -> Schema:
    return {"type": "number", "minimum": 0, "maximum": 1}


def _text(description: str) -> Schema:
    return {"type": "string", "description": description}


# Component schemas ------------------------------------------------------------


def _id_schemas() -> dict[str, Schema]:
    return {
        "Id": {
            "type": "string",
            "pattern": "^[0-9a-f]{32}$",
            "description": "A job, attempt, node or farm id: 32 lowercase hex digits.",
        },
        "TaskId": {
            "type": "string",
            "pattern": "^[0-9a-f]{32}-[0-9]{7}$",
            "description": "A task id: its job's id, a dash and the task's index"
            " in 7 digits.",
        },
        "WorkerId": {
            "type": "string",
            "pattern": "^[0-9a-f]{32}\\.[0-9]+$",
            "description": "A worker slot: its node's id, a dot and the slot number.",
        },
        "Sha256": {
            "type": "string",
            "pattern": "^[0-9a-f]{64}$",
            "description": "A SHA-256 digest in 64 lowercase hex digits.",
        },
        "DateTime": {
            "type": "string",
            "format": "date-time",
            "description": "A time in ISO 8601 with the UTC offset +00:00.",
        },
    }


def _status_schemas() -> dict[str, Schema]:
    return {
        "JobStatus": enum(s.value for s in JobStatus),
        "TaskStatus": enum(
            (s.value for s in TaskStatus),
            "soft-failed tasks run again like queued ones.",
        ),
        "AttemptStatus": enum(
            (s.value for s in AttemptStatus),
            "lost: the worker went silent or its node died during the attempt.",
        ),
        "NodeState": enum(
            (s.value for s in PeerState),
            "Liveness as the answering node sees it. left: the node said goodbye.",
        ),
    }


def _settings_schemas() -> dict[str, Schema]:
    return {
        "Requirements": obj(
            {
                "gpu": {
                    **enum(GPU_MODES),
                    "default": "none",
                    "description": "none: any worker; prefer: GPU workers first;"
                    " require: only workers with one of gpu_types (any GPU when"
                    " gpu_types is empty).",
                },
                "gpu_types": array(enum(GPU_TYPES), default=[]),
                "min_blender": {
                    **nullable(
                        {
                            "type": "string",
                            "pattern": "^\\d{1,3}\\.\\d{1,3}(\\.\\d{1,3})?$",
                        }
                    ),
                    "default": None,
                    "description": "The oldest Blender version, such as 4.2.",
                },
            },
            optional=("gpu", "gpu_types", "min_blender"),
            description="What a worker needs to take the job's tasks.",
        )
        | {
            # gpu_types names the GPUs a job accepts, so a CPU job has none.
            "if": {"properties": {"gpu": {"const": "none"}}},
            "then": {"properties": {"gpu_types": {"maxItems": 0}}},
        },
        "SleepSettings": obj(
            {
                "tasks": integer(1, MAX_FRAMES),
                "duration": {
                    "type": "number",
                    "minimum": 0,
                    "maximum": MAX_SLEEP_SECONDS,
                    "description": "Seconds each task sleeps.",
                },
                "fail_tasks": array(
                    integer(0),
                    default=[],
                    description="Indices of the tasks that fail on purpose.",
                ),
            },
            optional=("fail_tasks",),
            description="Settings of a sleep job, which renders nothing.",
        ),
        "RenderOverrides": obj(
            {
                "engine": enum(ENGINES),
                "device": enum(DEVICES),
                "samples": integer(1, 1_000_000),
                "resolution_percentage": integer(1, 1000),
            },
            optional=("engine", "device", "samples", "resolution_percentage"),
            description="Render settings that replace the blend file's own.",
        ),
        "RenderSettings": obj(
            {
                "blend_sha256": ref("Sha256"),
                "blend_size": integer(1),
                "blend_name": {
                    "type": "string",
                    "minLength": 7,
                    "maxLength": 255,
                    "pattern": "^[^/\\\\\\x00]+\\.blend$",
                    "description": "The blend file's name, without folders.",
                },
                "frames": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": MAX_SPEC_LENGTH,
                    "description": "A frame spec such as 1-250 or 1,3,5-9x2.",
                },
                "manifest_sha256": {
                    **ref("Sha256"),
                    "description": "The blob that lists the job's other files"
                    " (textures, libraries, caches) with their paths and hashes."
                    " Upload it and every file it lists first.",
                },
                "blender_version": {
                    "type": "string",
                    "pattern": "^\\d{1,3}\\.\\d{1,3}(\\.\\d{1,3})?$",
                    "description": "The Blender version that saved the blend file,"
                    " such as 5.0.1.",
                },
                "chunk_size": integer(1, MAX_CHUNK_SIZE, default=1),
                "output_dir": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": MAX_PATH_LENGTH,
                    "description": "An absolute folder on the submitting node.",
                },
                "output_name": {
                    "type": "string",
                    "default": "",
                    "description": "A file name template such as shot_####.",
                },
                "overrides": {**ref("RenderOverrides"), "default": {}},
            },
            optional=(
                "manifest_sha256",
                "blender_version",
                "chunk_size",
                "output_name",
                "overrides",
            ),
            description="Settings of a blender-render job. The node that takes"
            " the submission must hold the blend file, so upload it there first"
            " (PUT /api/blobs/{sha256}). That node sets blend_size itself.",
        ),
    }


def _submission(job_type: str, settings: str) -> Schema:
    return obj(
        {
            "name": {
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_NAME_LENGTH,
                "pattern": "\\S",
            },
            "job_type": {"const": job_type},
            "priority": integer(0, 100, default=50),
            "settings": ref(settings),
            "requirements": ref("Requirements"),
        },
        optional=("priority", "requirements"),
    )


def _job_schemas() -> dict[str, Schema]:
    task_statuses = [s.value for s in TaskStatus]
    return {
        "JobSubmission": {
            "oneOf": [
                _submission("sleep", "SleepSettings"),
                _submission("blender-render", "RenderSettings"),
            ],
            "description": "A job as a user submits it.",
        },
        "Job": obj(
            {
                "id": ref("Id"),
                "name": {"type": "string"},
                "status": ref("JobStatus"),
                "priority": integer(0, 100),
                "job_type": enum(JOB_TYPES),
                "settings": {
                    "anyOf": [ref("SleepSettings"), ref("RenderSettings")],
                    "description": "The settings as normalized on submission.",
                },
                "requirements": ref("Requirements"),
                "created": ref("DateTime"),
                "updated": ref("DateTime"),
                "task_counts": counts_by(task_statuses, "Tasks by status."),
                "tasks_total": integer(0),
                "frames_total": integer(0),
                "frames_done": integer(0),
                "progress": {**_progress(), "description": "From 0 to 1."},
                "submitter_node": ref("Id"),
                "error": nullable(_text("Why the job failed.")),
            },
        ),
        "JobPage": _page("jobs", ref("Job")),
        "JobReply": obj(
            {"job": ref("Job")},
            description="A job as it is after its submission or a change.",
        ),
        "DeletedJob": obj({"deleted": ref("Id")}),
        "RequeueJobRequest": obj(
            {
                "scope": {
                    **enum(
                        ["all", "failed"],
                        "all: every task; failed: the failed and canceled tasks.",
                    ),
                    "default": "all",
                }
            },
            optional=("scope",),
        ),
        "PriorityRequest": obj({"priority": integer(0, 100)}),
    }


def _page(key: str, item: Schema) -> Schema:
    return obj(
        {
            key: array(item),
            "total": {
                **integer(0),
                "description": "How many items match, on all pages.",
            },
            "limit": integer(1),
            "offset": integer(0),
        },
        description="One page of a list.",
    )


def _task_schemas() -> dict[str, Schema]:
    return {
        "Output": obj(
            {
                "frame": integer(MIN_FRAME, MAX_FRAME),
                "name": {"type": "string", "minLength": 1},
                "sha256": ref("Sha256"),
                "size": integer(0),
            },
            description="A file that a task rendered.",
        ),
        "Task": obj(
            {
                "id": ref("TaskId"),
                "job_id": ref("Id"),
                "index": integer(0),
                "name": {"type": "string"},
                "status": ref("TaskStatus"),
                "frames": array(integer(MIN_FRAME, MAX_FRAME)),
                "attempt_id": {
                    **nullable(ref("Id")),
                    "description": "The running attempt or the one that ended the"
                    " task; null while the task waits to run.",
                },
                "worker_id": nullable(ref("WorkerId")),
                "attempts": {**integer(0), "description": "Leases, lost ones too."},
                "failures": integer(0),
                "progress": _progress(),
                "error": nullable({"type": "string"}),
                "outputs": array(ref("Output")),
            },
        ),
        "TaskPage": _page("tasks", ref("Task")),
        "Attempt": obj(
            {
                "id": ref("Id"),
                "task_id": ref("TaskId"),
                "worker_id": ref("WorkerId"),
                "node_id": ref("Id"),
                "status": ref("AttemptStatus"),
                "progress": _progress(),
                "error": nullable({"type": "string"}),
                "started": ref("DateTime"),
                "ended": nullable(ref("DateTime")),
            },
            description="One run of a task on one worker.",
        ),
        "TaskDetail": obj(
            {"task": ref("Task"), "attempts": array(ref("Attempt"))},
            description="A task and its attempts, oldest first.",
        ),
        "TaskRequeued": obj({"task": ref("Task"), "job": ref("Job")}),
        "LogLine": obj(
            {
                "id": integer(1),
                "attempt_id": ref("Id"),
                "created": ref("DateTime"),
                "line": {"type": "string"},
            }
        ),
        "LogPage": obj(
            {
                "lines": array(ref("LogLine")),
                "last_id": {
                    **integer(0),
                    "description": "The id of the last line, or `after` when there"
                    " are no lines. Pass it as `after` to read the lines that follow.",
                },
            },
            description="Log lines, oldest first.",
        ),
    }


def _farm_schemas() -> dict[str, Schema]:
    holder = {"node_id": ref("Id"), "epoch": integer(0)}
    return {
        "Farm": obj(
            {
                "farm": _text("The farm's name."),
                "farm_id": ref("Id"),
                "node_id": {**ref("Id"), "description": "The node that answered."},
                "server": nullable(obj(holder)),
                "managers": array(obj({"site": {"type": "string"}, **holder})),
                "sites": array({"type": "string"}),
                "counts": obj(
                    {
                        "nodes": count_map("NodeState", "Nodes by state."),
                        "jobs": count_map(
                            "JobStatus",
                            "Jobs by status, every status as a key. It is empty"
                            " while the server is unreachable.",
                        ),
                        "tasks": count_map(
                            "TaskStatus",
                            "Tasks by status, every status as a key. It is empty"
                            " while the server is unreachable.",
                        ),
                        "workers": count_map(None, "Workers by status."),
                    }
                ),
                "last_frame": nullable(
                    obj(
                        {
                            "job_id": ref("Id"),
                            "task_id": ref("TaskId"),
                            "updated": ref("DateTime"),
                        },
                        description="The newest completed task.",
                    )
                ),
                "server_reachable": {
                    "type": "boolean",
                    "description": "Whether the counts come from the server. The"
                    " counts of jobs, tasks and workers are empty when not.",
                },
            }
        ),
        "Capabilities": obj(
            {
                "cpu_cores": integer(0),
                "gpu_types": array({"type": "string"}),
                "blender_version": nullable({"type": "string"}),
                "tags": array({"type": "string"}),
            }
        ),
        "Worker": obj(
            {
                "worker_id": ref("WorkerId"),
                "status": {"type": "string"},
                "current_task": nullable(
                    obj(
                        {
                            "job_id": ref("Id"),
                            "task_id": ref("TaskId"),
                            "name": {"type": "string"},
                            "progress": _progress(),
                        }
                    )
                ),
            },
            description="One worker slot of a node.",
        ),
        "Node": obj(
            {
                "node_id": ref("Id"),
                "site": {"type": "string"},
                "address": {"type": "string"},
                "state": ref("NodeState"),
                "roles": array(
                    obj(
                        {
                            "role": {
                                "type": "string",
                                "description": "server, or manager:SITE.",
                            },
                            "epoch": integer(0),
                        }
                    )
                ),
                "capabilities": ref("Capabilities"),
                "worker_slots": integer(0),
                "this_node": {"type": "boolean"},
                "last_seen": {
                    **ref("DateTime"),
                    "description": "When the answering node last heard from it.",
                },
                "workers": array(ref("Worker")),
            }
        ),
        "NodeList": obj({"nodes": array(ref("Node"))}),
    }


def _blob_schemas() -> dict[str, Schema]:
    return {
        "MissingBlobsRequest": obj(
            {"hashes": array(ref("Sha256"), maxItems=MAX_HASHES)}
        ),
        "MissingBlobs": obj(
            {"missing": array(ref("Sha256"))},
            description="The requested hashes that this node does not hold.",
        ),
        "Blob": obj({"sha256": ref("Sha256"), "size": integer(0)}),
    }


EVENT_SCHEMAS = {
    "hello": "HelloEvent",
    "job": "Job",
    "job_deleted": "JobDeletedEvent",
    "task": "Task",
    "tasks": "TasksEvent",
    "log": "LogEvent",
    "nodes": "NodeList",
    "reset": "ResetEvent",
}
"""Event name: the component schema of its JSON data."""


def _event_schemas() -> dict[str, Schema]:
    return {
        "HelloEvent": obj(
            {"node_id": ref("Id")},
            description="The first event on every connection: the node that sends.",
        ),
        "JobDeletedEvent": obj({"id": ref("Id")}),
        "TasksEvent": obj(
            {"job_id": ref("Id"), "count": integer(1)},
            description="Stands for the task events of many tasks of one job that"
            " changed at once, such as on submission or requeue. Fetch the job's"
            " tasks again.",
        ),
        "LogEvent": obj(
            {
                "job_id": ref("Id"),
                "task_id": ref("TaskId"),
                "attempt_id": ref("Id"),
                "lines": array(
                    obj(
                        {
                            "id": integer(1),
                            "created": ref("DateTime"),
                            "line": {"type": "string"},
                        }
                    )
                ),
            },
            description="New log lines of one attempt.",
        ),
        "ResetEvent": obj(
            {},
            description="The node lost track of changes (a new server, or a"
            " client that fell behind). Fetch again what you show.",
        ),
    }


def _error_schema() -> Schema:
    codes = [code for code, _description in ERROR_CODES.values()]
    return obj(
        {
            "error": obj(
                {
                    "code": enum(codes),
                    "message": {"type": "string", "minLength": 1},
                    "field": nullable(
                        _text("The parameter or body field at fault, if any.")
                    ),
                }
            )
        },
        description="The body of every error response.",
    )


def build_schemas() -> dict[str, Schema]:
    """Return every component schema, by name."""
    return {
        **_id_schemas(),
        **_status_schemas(),
        **_settings_schemas(),
        **_job_schemas(),
        **_task_schemas(),
        **_farm_schemas(),
        **_blob_schemas(),
        **_event_schemas(),
        "Error": _error_schema(),
    }


# Parameters and responses --------------------------------------------------------


def _path_id(name: str, description: str) -> Schema:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string", "minLength": 1, "maxLength": MAX_PATH_ID_LENGTH},
    }


def _query(name: str, schema: Schema, description: str) -> Schema:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }


def build_parameters() -> dict[str, Schema]:
    """Return the reusable parameters, by name."""
    return {
        "JobId": _path_id("job_id", "The job's id. An unknown id gets 404."),
        "TaskId": _path_id("task_id", "The task's id. An unknown id gets 404."),
        "Offset": _query("offset", integer(0, MAX_OFFSET, default=0), "Items to skip."),
    }


def _parameter(name: str) -> Schema:
    return {"$ref": f"#/components/parameters/{name}"}


def _error_response(status: int) -> Schema:
    code, description = ERROR_CODES[status]
    pinned = {
        "allOf": [
            ref("Error"),
            {"properties": {"error": {"properties": {"code": {"const": code}}}}},
        ]
    }
    return {
        "description": description,
        "content": {"application/json": {"schema": pinned}},
    }


def build_responses() -> dict[str, Schema]:
    """Return the reusable error responses, by name."""
    return {_RESPONSE_NAMES[status]: _error_response(status) for status in ERROR_CODES}


def _json(description: str, schema: Schema) -> Schema:
    return {
        "description": description,
        "content": {"application/json": {"schema": schema}},
    }


def _media(description: str, media_type: str, schema: Schema) -> Schema:
    return {"description": description, "content": {media_type: {"schema": schema}}}


def _operation(
    operation_id: str,
    summary: str,
    tag: str,
    responses: dict[str, Schema],
    *,
    errors: Iterable[int] = (),
    parameters: Sequence[Schema] = (),
    body: Schema | None = None,
    description: str | None = None,
) -> Schema:
    operation: Schema = {"operationId": operation_id, "summary": summary, "tags": [tag]}
    if description:
        operation["description"] = description
    if parameters:
        operation["parameters"] = list(parameters)
    if body is not None:
        operation["requestBody"] = body
    all_responses = dict(responses)
    for status in sorted(set(errors)):
        all_responses[str(status)] = {
            "$ref": f"#/components/responses/{_RESPONSE_NAMES[status]}"
        }
    operation["responses"] = all_responses
    return operation


def _json_body(schema: Schema) -> Schema:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _secure(paths: dict[str, dict[str, Schema]]) -> None:
    """Require the token, and declare 401, on every POST, PUT and DELETE."""
    for methods in paths.values():
        for method, operation in methods.items():
            if method in _SECURED_METHODS:
                operation["security"] = [{"bearerAuth": []}]
                responses = operation["responses"]
                responses.setdefault(
                    "401", {"$ref": "#/components/responses/Unauthorized"}
                )
                operation["responses"] = dict(
                    sorted(responses.items(), key=lambda item: item[0])
                )


# Paths -----------------------------------------------------------------------


def _farm_paths() -> dict[str, dict[str, Schema]]:
    return {
        "/api/farm": {
            "get": _operation(
                "getFarm",
                "Describe the farm: its roles, sites and counts.",
                "farm",
                {"200": _json("The farm.", ref("Farm"))},
            )
        },
        "/api/farm/thumbnail": {
            "get": _operation(
                "getFarmThumbnail",
                "Fetch the farm's last rendered frame as a JPEG.",
                "frames",
                {"200": _jpeg()},
                errors=(404, 503),
            )
        },
        "/api/nodes": {
            "get": _operation(
                "listNodes",
                "List the farm's nodes as the answering node sees them.",
                "farm",
                {"200": _json("The nodes.", ref("NodeList"))},
            )
        },
    }


def _jpeg() -> Schema:
    return _media(
        "The last rendered frame, at most 640 by 640 pixels.",
        "image/jpeg",
        {"type": "string", "contentMediaType": "image/jpeg"},
    )


def _status_filter(status_schema: str, items: str) -> Schema:
    return {
        **_query(
            "status",
            array(ref(status_schema), maxItems=MAX_STATUS_FILTERS),
            f"Keep {items} in any of these statuses. Repeat it for more than one.",
        ),
        "style": "form",
        "explode": True,
    }


def _job_list_parameters() -> list[Schema]:
    return [
        _status_filter("JobStatus", "jobs"),
        _query(
            "q",
            {"type": "string", "maxLength": MAX_QUERY_LENGTH},
            "Keep jobs whose name contains this text, ignoring case.",
        ),
        _query(
            "limit",
            integer(1, MAX_JOB_PAGE, default=50),
            "The most jobs to return.",
        ),
        _parameter("Offset"),
    ]


def _job_action(operation_id: str, summary: str, body: Schema | None = None) -> Schema:
    return _operation(
        operation_id,
        summary,
        "jobs",
        {"200": _json("The job after the change.", ref("JobReply"))},
        errors=(400, 404, 409, 503) if body is None else (400, 404, 409, 413, 503),
        parameters=[_parameter("JobId")],
        body=body,
    )


def _job_paths() -> dict[str, dict[str, Schema]]:
    job_id = [_parameter("JobId")]
    return {
        "/api/jobs": {
            "get": _operation(
                "listJobs",
                "List jobs, newest first.",
                "jobs",
                {"200": _json("One page of jobs.", ref("JobPage"))},
                errors=(400, 503),
                parameters=_job_list_parameters(),
            ),
            "post": _operation(
                "submitJob",
                "Submit a job.",
                "jobs",
                {"201": _json("The new job.", ref("JobReply"))},
                errors=(400, 413, 503),
                body=_json_body(ref("JobSubmission")),
            ),
        },
        "/api/jobs/{job_id}": {
            "get": _operation(
                "getJob",
                "Fetch one job.",
                "jobs",
                {"200": _json("The job.", ref("Job"))},
                errors=(400, 404, 503),
                parameters=job_id,
            ),
            "delete": _operation(
                "deleteJob",
                "Forget a completed, failed or canceled job.",
                "jobs",
                {"200": _json("The id of the deleted job.", ref("DeletedJob"))},
                errors=(400, 404, 409, 503),
                parameters=job_id,
            ),
        },
        "/api/jobs/{job_id}/pause": {
            "post": _job_action(
                "pauseJob",
                "Stop handing out the job's tasks and stop the running ones.",
            )
        },
        "/api/jobs/{job_id}/resume": {
            "post": _job_action("resumeJob", "Queue a paused job again.")
        },
        "/api/jobs/{job_id}/cancel": {
            "post": _job_action("cancelJob", "Stop the job until it is requeued.")
        },
        "/api/jobs/{job_id}/requeue": {
            "post": _job_action(
                "requeueJob",
                "Run all tasks, or the failed ones, again.",
                {**_json_body(ref("RequeueJobRequest")), "required": False},
            )
        },
        "/api/jobs/{job_id}/priority": {
            "post": _job_action(
                "setJobPriority",
                "Change the job's priority.",
                _json_body(ref("PriorityRequest")),
            )
        },
        "/api/jobs/{job_id}/tasks": {
            "get": _operation(
                "listJobTasks",
                "List a job's tasks in dispatch order.",
                "tasks",
                {"200": _json("One page of tasks.", ref("TaskPage"))},
                errors=(400, 404, 503),
                parameters=[
                    *job_id,
                    _status_filter("TaskStatus", "tasks"),
                    _query(
                        "limit",
                        integer(1, MAX_TASK_PAGE, default=200),
                        "The most tasks to return.",
                    ),
                    _parameter("Offset"),
                ],
            )
        },
        "/api/jobs/{job_id}/thumbnail": {
            "get": _operation(
                "getJobThumbnail",
                "Fetch the job's last rendered frame as a JPEG.",
                "frames",
                {"200": _jpeg()},
                errors=(400, 404, 503),
                parameters=job_id,
            )
        },
    }


def _log_parameters(text: bool) -> list[Schema]:
    parameters = [
        _parameter("TaskId"),
        _query("attempt_id", ref("Id"), "Keep the lines of one attempt only."),
        _query(
            "after",
            integer(0, MAX_OFFSET, default=0),
            "Keep the lines after this line id.",
        ),
        _query(
            "limit",
            integer(1, MAX_LOG_PAGE, default=MAX_LOG_PAGE if text else 1000),
            "The most lines to return, counted from `after`.",
        ),
    ]
    if not text:
        tail = _query(
            "tail",
            integer(0, MAX_LOG_TAIL, default=200),
            "Return only the last this many lines. Without `tail` and `after`,"
            " the last 200 lines come back.",
        )
        parameters.insert(2, tail)
    return parameters


def _task_paths() -> dict[str, dict[str, Schema]]:
    task_id = [_parameter("TaskId")]
    return {
        "/api/tasks/{task_id}": {
            "get": _operation(
                "getTask",
                "Fetch one task and its attempts.",
                "tasks",
                {"200": _json("The task and its attempts.", ref("TaskDetail"))},
                errors=(400, 404, 503),
                parameters=task_id,
            )
        },
        "/api/tasks/{task_id}/requeue": {
            "post": _operation(
                "requeueTask",
                "Run one task again.",
                "tasks",
                {"200": _json("The task and its job.", ref("TaskRequeued"))},
                errors=(400, 404, 409, 503),
                parameters=task_id,
            )
        },
        "/api/tasks/{task_id}/log": {
            "get": _operation(
                "getTaskLog",
                "Read a task's log lines.",
                "tasks",
                {"200": _json("Log lines, oldest first.", ref("LogPage"))},
                errors=(400, 404, 503),
                parameters=_log_parameters(text=False),
            )
        },
        "/api/tasks/{task_id}/log.txt": {
            "get": _operation(
                "getTaskLogText",
                "Download a task's log as plain text.",
                "tasks",
                {
                    "200": _media(
                        "The kept lines, oldest first, one per text line.",
                        "text/plain",
                        {"type": "string"},
                    )
                },
                errors=(400, 404, 503),
                parameters=_log_parameters(text=True),
            )
        },
    }


def _events_operation() -> Schema:
    names = ", ".join(f"{event} ({schema})" for event, schema in EVENT_SCHEMAS.items())
    operation = _operation(
        "streamEvents",
        "Stream changes as server-sent events.",
        "events",
        {
            "200": _media(
                "An endless stream of events. Each event's data is JSON, and"
                f" x-events names its schema: {names}. A comment line comes"
                " every 15 seconds.",
                "text/event-stream",
                {"type": "string"},
            )
        },
        errors=(400,),
        parameters=[
            _query(
                "job_id",
                ref("Id"),
                "Send the task, tasks and log events of this job only.",
            )
        ],
    )
    # OpenAPI 3.1 cannot describe the data of server-sent events, so this
    # extension maps each event name to the schema of its data.
    operation["x-events"] = {
        event: ref(schema) for event, schema in EVENT_SCHEMAS.items()
    }
    return operation


def _other_paths() -> dict[str, dict[str, Schema]]:
    return {
        "/api/blobs/missing": {
            "post": _operation(
                "findMissingBlobs",
                "Tell which of the given files this node lacks.",
                "blobs",
                {"200": _json("The missing hashes.", ref("MissingBlobs"))},
                errors=(400, 413),
                body=_json_body(ref("MissingBlobsRequest")),
            )
        },
        "/api/blobs/{sha256}": {
            "put": _operation(
                "uploadBlob",
                "Upload one file, named by its SHA-256.",
                "blobs",
                {"201": _json("The stored file.", ref("Blob"))},
                errors=(400, 413),
                parameters=[
                    {
                        "name": "sha256",
                        "in": "path",
                        "required": True,
                        "description": "The SHA-256 of the body. A mismatch gets 400.",
                        "schema": ref("Sha256"),
                    }
                ],
                body={
                    "required": True,
                    "content": {
                        "application/octet-stream": {
                            "schema": {"type": "string", "format": "binary"}
                        }
                    },
                },
            )
        },
        "/api/events": {"get": _events_operation()},
        "/api/openapi.json": {
            "get": _operation(
                "getOpenApiDocument",
                "Fetch this document.",
                "meta",
                {"200": _json("The OpenAPI document.", {"type": "object"})},
            )
        },
    }


_JOB_OPERATIONS = (
    "getJob",
    "deleteJob",
    "pauseJob",
    "resumeJob",
    "cancelJob",
    "requeueJob",
    "setJobPriority",
    "listJobTasks",
    "getJobThumbnail",
)
_TASK_OPERATIONS = ("getTask", "requeueTask", "getTaskLog", "getTaskLogText")

# (path, method, status) of a response: the operations that can take an id
# from it, the parameter and where the id is in the response body.
_LINK_SOURCES = (
    (("/api/jobs", "post", "201"), _JOB_OPERATIONS, "job_id", "/job/id"),
    (("/api/jobs", "get", "200"), _JOB_OPERATIONS, "job_id", "/jobs/0/id"),
    (
        ("/api/jobs/{job_id}/tasks", "get", "200"),
        _TASK_OPERATIONS,
        "task_id",
        "/tasks/0/id",
    ),
)


def _add_links(paths: dict[str, dict[str, Schema]]) -> None:
    """Link responses that contain ids to the operations that take them.

    Clients and test tools such as schemathesis follow links to chain calls.
    """
    for (path, method, status), targets, parameter, pointer in _LINK_SOURCES:
        response = paths[path][method]["responses"][status]
        response["links"] = {
            target: {
                "operationId": target,
                "parameters": {parameter: f"$response.body#{pointer}"},
            }
            for target in targets
        }


def build_paths() -> dict[str, dict[str, Schema]]:
    """Return every path and its operations."""
    paths = {**_farm_paths(), **_job_paths(), **_task_paths(), **_other_paths()}
    _secure(paths)
    _add_links(paths)
    return paths


def build_document() -> dict[str, Any]:
    """Build the OpenAPI 3.1 document of the HTTP API."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "flamenco-p2p HTTP API",
            "version": API_VERSION,
            "description": "The API that every node of a flamenco-p2p farm serves"
            " on its HTTP port (8888 by default). A node answers about the farm's"
            " members itself and passes the rest to the farm's server. Reads need"
            " no token, but every POST, PUT and DELETE needs the farm token.",
        },
        "servers": [{"url": "/"}],
        "tags": [
            {"name": "farm", "description": "The farm and its nodes."},
            {"name": "jobs", "description": "Submitting and steering jobs."},
            {"name": "tasks", "description": "Tasks, attempts and logs."},
            {"name": "frames", "description": "Rendered frames."},
            {"name": "blobs", "description": "Files that jobs need, by hash."},
            {"name": "events", "description": "Changes as they happen."},
            {"name": "meta", "description": "This document."},
        ],
        "paths": build_paths(),
        "components": {
            "schemas": build_schemas(),
            "parameters": build_parameters(),
            "responses": build_responses(),
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The farm token, which `flamenco-p2p token` prints.",
                }
            },
        },
    }


def render_document() -> str:
    """Return the document as the JSON text kept in the repository."""
    return json.dumps(build_document(), indent=2, ensure_ascii=False) + "\n"


def main() -> None:
    """Write the document to standard output."""
    sys.stdout.write(render_document())


if __name__ == "__main__":
    main()
