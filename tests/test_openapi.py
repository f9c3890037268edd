"""The OpenAPI document: in sync, valid, true to the app's routes and a live farm."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
import pytest
import schemathesis
from farm import LocalFarm
from openapi_schema_validator import OAS31Validator, oas31_format_checker
from openapi_spec_validator import validate

from flamenco_p2p.api import openapi
from flamenco_p2p.api.app import FarmApi
from flamenco_p2p.api.openapi import build_document

KEPT_DOCUMENT = Path(openapi.__file__).with_name("openapi.json")
REGENERATE = (
    "regenerate it with: .venv/bin/python -m flamenco_p2p.api.openapi"
    " > flamenco_p2p/api/openapi.json"
)
HTTP_METHODS = frozenset({"get", "put", "post", "delete", "patch", "head", "options"})

# Operations that schemathesis leaves out, each with the reason.
SKIPPED_OPERATIONS = {
    # The event stream never ends, so no response would ever be complete.
    "streamEvents",
}
MAX_EXAMPLES = 20
SCHEMATHESIS_CHECKS = (
    "not_a_server_error,response_schema_conformance,"
    "status_code_conformance,content_type_conformance"
)


def test_openapi_kept_copy_matches_builder() -> None:
    kept_text = KEPT_DOCUMENT.read_text(encoding="utf-8")
    assert json.loads(kept_text) == build_document(), (
        f"{KEPT_DOCUMENT.name} differs from build_document(); {REGENERATE}"
    )
    assert kept_text == openapi.render_document(), (
        f"{KEPT_DOCUMENT.name} has the right content but not the generated"
        f" layout; {REGENERATE}"
    )


def test_openapi_document_is_valid() -> None:
    validate(build_document())


def test_openapi_operations_are_named() -> None:
    document = build_document()
    ids = []
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            name = f"{method.upper()} {path}"
            assert operation.get("operationId"), f"{name} has no operationId"
            assert operation.get("summary"), f"{name} has no summary"
            ids.append(operation["operationId"])
    assert len(ids) == len(set(ids)), f"operationIds repeat: {sorted(ids)}"


def test_openapi_changes_need_token() -> None:
    document = build_document()
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            name = f"{method.upper()} {path}"
            if method in ("post", "put", "delete"):
                assert operation.get("security") == [{"bearerAuth": []}], name
                assert "401" in operation["responses"], name
            else:
                assert "security" not in operation, name


def test_openapi_covers_app_routes() -> None:
    # build_app needs no node, because its handlers only run on requests.
    api = FarmApi.__new__(FarmApi)
    app = api.build_app()
    served = set()
    for route in app.router.routes():
        path = route.resource.canonical if route.resource else ""
        # "/" and "/static" serve the dashboard, which is not part of the API.
        # aiohttp adds a HEAD route to every GET route by itself.
        if not path.startswith("/api/") or route.method == "HEAD":
            continue
        served.add((route.method, path))
    documented = {
        (method.upper(), path)
        for path, methods in build_document()["paths"].items()
        for method in methods
        if method in HTTP_METHODS
    }
    assert served - documented == set(), "routes the app serves but not documented"
    assert documented - served == set(), "documented routes the app does not serve"


# The schemathesis run against a live farm ------------------------------------

# Schemathesis generates submissions from the document, which allows sleep jobs
# of a million tasks. Storing one takes about 15 s on 2 cores (the estimate
# behind the submit timeout in flamenco_p2p/node_client.py), so a run would
# spend its time on a few of them. Render jobs would also create output folders
# anywhere on this machine. `st run` loads this file as its hooks module
# (SCHEMATHESIS_HOOKS), and the hook below shrinks every submission before it
# is sent. The shrunk job is still one that the schema allows.
MAX_FUZZ_TASKS = 3
MAX_FUZZ_SECONDS = 1.0
FUZZ_OUTPUT_ENV = "FLAMENCO_P2P_FUZZ_OUTPUT"


@schemathesis.hook("before_call")
def shrink_submission(
    context: schemathesis.HookContext,
    case: schemathesis.Case[Any],
    kwargs: dict[str, Any],
) -> None:
    """Cap a generated job's size and point its output folder into the test's."""
    if (case.method.upper(), case.path) != ("POST", "/api/jobs"):
        return
    body: Any = case.body
    settings = body.get("settings") if isinstance(body, dict) else None
    if not isinstance(settings, dict):
        return
    tasks = settings.get("tasks")
    if isinstance(tasks, int) and not isinstance(tasks, bool):
        settings["tasks"] = min(tasks, MAX_FUZZ_TASKS)
        # Indices past the new task count would make a valid job invalid.
        failing = settings.get("fail_tasks")
        if isinstance(failing, list):
            settings["fail_tasks"] = [
                index
                for index in failing
                if not isinstance(index, int) or index < settings["tasks"]
            ]
    duration = settings.get("duration")
    if isinstance(duration, int | float) and not isinstance(duration, bool):
        settings["duration"] = min(duration, MAX_FUZZ_SECONDS)
    if isinstance(settings.get("output_dir"), str):
        settings["output_dir"] = os.environ.get(FUZZ_OUTPUT_ENV, "/nonexistent")


SMALL_JOB = {"tasks": 2, "duration": 0.2}
EXPECTED_EVENTS = {"hello", "job", "task", "log", "nodes"}
"""Events that submitting and running SMALL_JOB must cause."""

SEED_JOBS = [
    # Completed before the run starts, so that finished tasks, attempts, logs
    # and the farm's last frame are there to read.
    {"name": "done", "tasks": 3, "duration": 0.1, "fail_tasks": []},
    # A task that fails on purpose gives tasks and attempts with errors.
    {
        "name": "\u00c9pisode \u2013 \u00e9choue",
        "tasks": 2,
        "duration": 0.1,
        "fail_tasks": [1],
    },
    # Still running during the run: active tasks and busy workers. Two tasks
    # leave the third node's worker free for the other jobs.
    {"name": "long", "tasks": 2, "duration": 120.0, "fail_tasks": []},
]


async def _seed_farm(base: str, token: str) -> list[str]:
    """Submit SEED_JOBS over HTTP and wait for the first one to complete."""
    job_ids = []
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        for seed in SEED_JOBS:
            job = {
                "name": seed["name"],
                "job_type": "sleep",
                "priority": 50,
                "settings": {
                    "tasks": seed["tasks"],
                    "duration": seed["duration"],
                    "fail_tasks": seed["fail_tasks"],
                },
            }
            async with session.post(f"{base}/api/jobs", json=job) as response:
                body = await response.json()
                assert response.status == 201, body
                job_ids.append(body["job"]["id"])
        deadline = time.monotonic() + 60
        status = None
        while time.monotonic() < deadline:
            async with session.get(f"{base}/api/jobs/{job_ids[0]}") as response:
                status = (await response.json())["status"]
            if status == "completed":
                return job_ids
            await asyncio.sleep(0.2)
    raise AssertionError(
        f"seed job {job_ids[0]} is {status}, not completed, after 60 s"
    )


async def _fetch_json(url: str) -> Any:
    async with (
        aiohttp.ClientSession() as session,
        session.get(url) as response,
    ):
        assert response.status == 200, url
        return await response.json()


async def _collect_events(base: str, token: str) -> list[tuple[str, Any]]:
    """Submit a small job while reading the event stream, and return its events.

    Reading stops once every kind in EXPECTED_EVENTS has arrived, or after 20 s.
    """
    events: list[tuple[str, Any]] = []
    headers = {"Authorization": f"Bearer {token}"}
    job = {
        "name": "events",
        "job_type": "sleep",
        "priority": 100,
        "settings": SMALL_JOB,
    }
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{base}/api/events") as stream,
    ):
        assert stream.status == 200, await stream.text()
        assert stream.content_type == "text/event-stream"
        async with session.post(f"{base}/api/jobs", json=job, headers=headers) as reply:
            assert reply.status == 201, await reply.text()
        kind, data = "message", []
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(20):
                while not {name for name, _data in events} >= EXPECTED_EVENTS:
                    raw = await stream.content.readline()
                    line = raw.decode("utf-8").rstrip("\r\n")
                    if line.startswith("event:"):
                        kind = line.removeprefix("event:").strip()
                    elif line.startswith("data:"):
                        data.append(line.removeprefix("data:").removeprefix(" "))
                    elif not line and data:
                        events.append((kind, json.loads("\n".join(data))))
                        kind, data = "message", []
    return events


def _event_errors(document: dict[str, Any], kind: str, data: Any) -> list[str]:
    """Return how one event's data breaks the schema that x-events names for it."""
    schemas = document["paths"]["/api/events"]["get"]["x-events"]
    if kind not in schemas:
        return [f"event {kind!r} is not in x-events"]
    schema = {**schemas[kind], "components": document["components"]}
    validator = OAS31Validator(schema, format_checker=oas31_format_checker)
    return [
        f"event {kind!r} at {list(error.absolute_path)}: {error.message}"
        for error in validator.iter_errors(data)
    ]


def _schemathesis_command(base: str, token: str) -> list[str]:
    st = Path(sys.executable).with_name("st")
    command = [
        str(st),
        "run",
        f"{base}/api/openapi.json",
        "--url",
        base,
        "--checks",
        SCHEMATHESIS_CHECKS,
        "--header",
        f"Authorization: Bearer {token}",
        # Every change carries the real token, so that it reaches its handler.
        "--generation-with-security-parameters",
        "false",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--generation-database",
        "none",
        "--request-timeout",
        "30",
        # NOTE: with two workers, the coverage phase failed now and then with
        # "SystemError: AST constructor recursion depth mismatch" from
        # ast.parse inside hypothesis (6.170, schemathesis 4.32, CPython
        # 3.11.7), apparently because both worker threads parse at once.
        "--workers",
        "1",
        "--no-color",
    ]
    for operation_id in sorted(SKIPPED_OPERATIONS):
        command += ["--exclude-operation-id", operation_id]
    return command


# A NamedTuple, not a dataclass: schemathesis runs this file as a module that
# is not in sys.modules, and dataclass() needs to find its module there.
class LiveFarm(NamedTuple):
    """A running farm with SEED_JOBS submitted, as the live tests use it."""

    base: str
    token: str
    seeded: list[str]

    def __repr__(self) -> str:
        # pytest prints test arguments in failure reports, and the token is a
        # secret even on a test farm.
        return f"LiveFarm(base={self.base!r}, seeded={self.seeded!r})"


@pytest.fixture(scope="module")
def live_farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveFarm]:
    root = tmp_path_factory.mktemp("openapi-farm")
    with LocalFarm(root, 3, mdns=False) as farm:
        asyncio.run(farm.wait_for_roles())
        base, token = farm.api_url(1), farm.token
        seeded = asyncio.run(_seed_farm(base, token))
        yield LiveFarm(base, token, seeded)


@pytest.mark.slow
def test_openapi_node_serves_document(live_farm: LiveFarm) -> None:
    served = asyncio.run(_fetch_json(f"{live_farm.base}/api/openapi.json"))
    assert served == build_document(), "the node serves a stale openapi.json"


@pytest.mark.slow
def test_openapi_events_match_schemas(live_farm: LiveFarm) -> None:
    # Schemathesis skips the event stream, so its events are checked here.
    events = asyncio.run(_collect_events(live_farm.base, live_farm.token))
    kinds = {kind for kind, _data in events}
    assert events, "the event stream sent nothing"
    assert events[0][0] == "hello", events[:1]
    assert kinds >= EXPECTED_EVENTS, f"events read: {sorted(kinds)}"
    document = build_document()
    errors = [
        error for kind, data in events for error in _event_errors(document, kind, data)
    ]
    assert errors == [], "\n".join(errors[:20])


@pytest.mark.slow
def test_openapi_schemathesis_live_farm(live_farm: LiveFarm, tmp_path: Path) -> None:
    base, token = live_farm.base, live_farm.token
    environment = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": __file__,
        "PYTHONPATH": str(Path(__file__).parent),
        FUZZ_OUTPUT_ENV: str(tmp_path / "fuzz-output"),
    }
    started = time.monotonic()
    result = subprocess.run(
        _schemathesis_command(base, token),
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    elapsed = time.monotonic() - started
    # Printed whole, so that the failures and the curl commands that
    # reproduce them are in the test report.
    print(result.stdout, result.stderr, f"schemathesis took {elapsed:.0f} s")
    assert result.returncode == 0, (
        f"schemathesis failed with exit status {result.returncode}; the captured"
        " output above lists each failing request and its response. It ends:\n"
        + (result.stdout + result.stderr)[-2000:]
    )

    page = asyncio.run(_fetch_json(f"{base}/api/jobs?limit=1000"))
    oversized = [
        job["id"]
        for job in page["jobs"]
        if job["tasks_total"] > MAX_FUZZ_TASKS and job["id"] not in live_farm.seeded
    ]
    assert oversized == [], "the hook let big generated jobs through"
    farm_view = asyncio.run(_fetch_json(f"{base}/api/farm"))
    assert farm_view["server_reachable"], "the farm lost its server"
