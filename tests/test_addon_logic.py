"""The add-on's bpy-free modules, checked against the farm's own code.

The add-on repeats the farm's frame syntax, TXT parsing, join codes and file
list format without importing flamenco_p2p, so these tests compare the copies
with the originals on many inputs.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import http.server
import json
import socket
import threading
from pathlib import Path
from typing import Any, ClassVar

import pytest
from flamenco_p2p_submit import (
    addresses,
    api,
    discovery,
    frames,
    invite,
    submission,
    upload,
)
from flamenco_p2p_submit.background import Cancelled
from hypothesis import given, settings
from hypothesis import strategies as st

from flamenco_p2p.discovery.txt import Advert, encode_txt
from flamenco_p2p.errors import FrameSpecError, InvalidInput
from flamenco_p2p.farmkey import new_farm_key
from flamenco_p2p.frames import parse_frames as farm_parse_frames
from flamenco_p2p.jobs.manifest import parse_manifest
from flamenco_p2p.jobs.spec import JobSpec

ADDON_DIR = Path(__file__).resolve().parent.parent / "addon" / "flamenco_p2p_submit"

FRAME_CASES = [
    "1",
    "-5",
    "1-10",
    "10-1",
    "1-10x3",
    "1:10:3",
    "1..10x2",
    " 1 - 3 , 7 ",
    "1-3,2-5",
    "5,5,5",
    "-10--5",
    "1-1000000",
    "0-1000000",
    "1-1048574",
    "1-1048575",
    "-1048574",
    "1-10x0",
    "1-10x9999999999",
    "1234567890",
    "",
    " ",
    ",",
    "1,,2",
    "a",
    "1-",
    "-",
    "1x2",
    "1..",
    "1:2:",
    "\uff11-\uff13",  # fullwidth digits, which Python's \d also matches
    "1" * 10_001,
    ",".join(["1-1000000"] * 2),
]


def compare_frame_parsers(spec: str) -> None:
    try:
        expected: list[int] | None = farm_parse_frames(spec)
    except FrameSpecError:
        expected = None
    try:
        got: list[int] | None = frames.parse_frames(spec)
    except frames.FrameSpecError:
        got = None
    assert got == expected, spec[:80]


@pytest.mark.parametrize("spec", FRAME_CASES)
def test_frames_match_farm_on_cases(spec: str) -> None:
    compare_frame_parsers(spec)


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet="0123456789-,:.x \t", max_size=24))
def test_frames_match_farm_on_random_specs(spec: str) -> None:
    compare_frame_parsers(spec)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(-2_000_000, 2_000_000),
            st.integers(-2_000_000, 2_000_000),
            st.integers(0, 50),
            st.sampled_from(["-{}x{}", "{}:{}:{}", "{}..{}x{}", "{}-{}"]),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_frames_match_farm_on_ranges(
    parts: list[tuple[int, int, int, str]],
) -> None:
    texts = []
    for first, last, step, pattern in parts:
        if pattern == "-{}x{}":
            texts.append(f"{first}-{last}x{step}")
        else:
            texts.append(pattern.format(first, last, step))
    compare_frame_parsers(",".join(texts))


def test_frames_count_and_scene_range() -> None:
    assert frames.count_frames("1-250") == 250
    assert frames.count_frames("1-10,5-15") == 15
    assert frames.scene_range_spec(1, 250) == "1-250"
    assert frames.scene_range_spec(1, 250, 2) == "1-250x2"
    assert frames.scene_range_spec(7, 7) == "7"
    with pytest.raises(frames.FrameSpecError, match="'1-x'"):
        frames.count_frames("1-x")


def make_advert(**changes: object) -> Advert:
    values: dict[str, object] = {
        "node_id": "0123456789abcdef0123456789abcdef",
        "farm_id": "fedcba9876543210fedcba9876543210",
        "site": "Studio A",
        "address": "127.0.0.11",
        "node_port": 7000,
        "roles": {"manager": 3, "server": 2},
        "capabilities": "cpu=8",
        "http_port": 8888,
    }
    values.update(changes)
    return Advert(**values)  # type: ignore[arg-type]


def wire(advert: Advert) -> dict[bytes, bytes | None]:
    return {key.encode(): value.encode() for key, value in encode_txt(advert).items()}


def test_advert_parses_what_nodes_publish() -> None:
    advert = make_advert()
    parsed = discovery.parse_advert(wire(advert), ["::1", "127.0.0.11"])
    assert parsed.node_id == advert.node_id
    assert parsed.farm_id == advert.farm_id
    assert parsed.site == advert.site
    assert parsed.address == "127.0.0.11"
    assert parsed.roles == {"manager": 3, "server": 2}
    assert parsed.api_url == "http://127.0.0.11:8888"
    no_http = discovery.parse_advert(wire(make_advert(http_port=None)), ["10.0.0.1"])
    assert no_http.api_url is None


def test_advert_reads_valueless_roles() -> None:
    # zeroconf 0.148, which the add-on bundles, reads "roles=" as None.
    properties = wire(make_advert(roles={}))
    properties[b"roles"] = None
    assert discovery.parse_advert(properties, ["127.0.0.11"]).roles == {}


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("id", b"XYZ", "id"),
        ("farm", b"short", "farm"),
        ("farm", None, "farm is missing"),
        ("roles", b"server", "role:epoch"),
        ("roles", b"server:1,server:2", "twice"),
        ("roles", b"server:99999999999999999999", "epoch"),
        ("http", b"0", "http"),
        ("http", b"65536", "http"),
        ("http", b"80a", "http"),
        ("site", b"\xff", "UTF-8"),
        ("site", b"a\x07b", "site"),
        ("site", b"x" * 256, "over 255"),
    ],
)
def test_advert_rejects_bad_fields(key: str, value: bytes | None, message: str) -> None:
    properties = wire(make_advert())
    properties[key.encode()] = value
    if value is None:
        del properties[key.encode()]
    with pytest.raises(discovery.AdvertError, match=message):
        discovery.parse_advert(properties, ["127.0.0.11"])


def test_advert_needs_unicast_ipv4() -> None:
    for addresses_seen in ([], ["::1"], ["224.0.0.251"], ["0.0.0.0"], ["nonsense"]):
        with pytest.raises(discovery.AdvertError, match="IPv4"):
            discovery.parse_advert(wire(make_advert()), addresses_seen)


def test_group_farms_finds_server_and_counts() -> None:
    nodes = [
        make_advert(node_id=f"{index:032x}", address=f"127.0.0.{10 + index}", roles={})
        for index in range(3)
    ]
    nodes[1] = make_advert(
        node_id=f"{1:032x}", address="127.0.0.11", roles={"server": 4}
    )
    other = make_advert(farm_id="ab" * 8, roles={"server": 9})
    adverts = [
        discovery.parse_advert(wire(advert), [advert.address])
        for advert in [*nodes, nodes[0], other]
    ]
    farms = discovery.group_farms(adverts)
    assert [farm.farm_id for farm in farms] == ["ab" * 8, make_advert().farm_id]
    ours = farms[1]
    assert len(ours.nodes) == 3
    assert ours.server is not None
    assert ours.server.address == "127.0.0.11"
    assert ours.api_url == "http://127.0.0.11:8888"


def test_join_code_matches_farm_key() -> None:
    for name in ("default", "Studio B — étage 2", "x" * 64):
        farm_key = new_farm_key(name)
        credentials = invite.parse_join_code(farm_key.invite_code())
        assert credentials.farm_name == name
        assert credentials.farm_id == farm_key.farm_id
        assert credentials.api_token == farm_key.api_token
        assert farm_key.key.hex() not in repr(credentials)
        assert credentials.api_token not in repr(credentials)


def test_join_code_accepts_spacing_and_case() -> None:
    farm_key = new_farm_key("studio")
    code = farm_key.invite_code()
    spaced = "  " + code.upper().replace("-", " -\n ") + " "
    assert invite.parse_join_code(spaced).farm_id == farm_key.farm_id


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda code: "xx" + code[2:], "must start with"),
        (lambda code: "fp1", "nothing after"),
        (lambda code: code[:20], "too short|cut short|typo"),
        (
            lambda code: code[:-3] + ("a" if code[-3] != "a" else "b") + code[-2:],
            "typo",
        ),
        (lambda code: code[:10] + "1" + code[11:], "cannot be part"),
        (lambda code: code + "q", "typo|cut short|cannot be part"),
    ],
)
def test_join_code_rejects_damage(mangle: object, message: str) -> None:
    code = new_farm_key("studio").invite_code()
    assert callable(mangle)
    with pytest.raises(invite.JoinCodeError, match=message):
        invite.parse_join_code(mangle(code))


def test_hkdf_matches_rfc5869_case_1() -> None:
    key = bytes.fromhex("0b" * 22)
    salt = bytes.fromhex("000102030405060708090a0b0c")
    info = bytes.fromhex("f0f1f2f3f4f5f6f7f8f9")
    expected = (
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf"
        "34007208d5b887185865"
    )
    assert invite.hkdf_sha256(key, info, 42, salt).hex() == expected


@pytest.mark.parametrize(
    ("text", "url"),
    [
        ("192.168.1.20", "http://192.168.1.20:8888"),
        (" node-3.local:9000 ", "http://node-3.local:9000"),
        ("http://10.0.0.5:8888/", "http://10.0.0.5:8888"),
        ("[::1]:8080", "http://[::1]:8080"),
    ],
)
def test_node_address_parses(text: str, url: str) -> None:
    assert addresses.node_base_url(text) == url


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("https://node:8888", "https://"),
        ("node:99999", "not a valid address"),
        ("node:0", "port 0"),
        ("node/jobs", "has a path"),
        ("user@node", "user name"),
        ("bad_host!", "neither an IP address nor a host name"),
    ],
)
def test_node_address_rejects(text: str, message: str) -> None:
    with pytest.raises(addresses.AddressError, match=message):
        addresses.node_base_url(text)


def test_interfaces_setting() -> None:
    assert addresses.parse_interfaces("") is None
    assert addresses.parse_interfaces(" 127.0.0.1, 10.0.0.2;127.0.0.1") == [
        "127.0.0.1",
        "10.0.0.2",
    ]
    with pytest.raises(addresses.AddressError, match="'eth0'"):
        addresses.parse_interfaces("eth0")
    assert addresses.describe_interfaces(["127.0.0.1"]) == "interface 127.0.0.1"


def write_pack(root: Path) -> None:
    (root / "tex").mkdir(parents=True)
    (root / "shot.blend").write_bytes(b"BLENDER-v500 main")
    (root / "tex" / "green.png").write_bytes(b"png bytes")
    (root / "lib").mkdir()
    (root / "lib" / "set.blend").write_bytes(b"BLENDER-v500 library")
    (root / "lib" / "copy.blend").write_bytes(b"png bytes")
    (root / upload.PACK_INFO_NAME).write_text("a BAT note")


def test_manifest_is_accepted_by_farm(tmp_path: Path) -> None:
    write_pack(tmp_path / "pack")
    blend, _files, manifest = upload.describe_pack(tmp_path / "pack", "shot.blend")
    assert manifest is not None
    assert blend.sha256 == hashlib.sha256(b"BLENDER-v500 main").hexdigest()
    data = manifest.source.read_bytes()
    assert hashlib.sha256(data).hexdigest() == manifest.sha256
    parsed = parse_manifest(data, "shot.blend")
    assert [job_file.path for job_file in parsed] == [
        "lib/copy.blend",
        "lib/set.blend",
        "tex/green.png",
    ]
    assert {job_file.path: job_file.size for job_file in parsed}["tex/green.png"] == 9


def test_upload_plan_sends_each_missing_hash_once(tmp_path: Path) -> None:
    write_pack(tmp_path / "pack")
    blend, files, manifest = upload.describe_pack(tmp_path / "pack", "shot.blend")
    assert manifest is not None
    same = {blob.path: blob for blob in files}
    texture = same["tex/green.png"]
    assert same["lib/copy.blend"].sha256 == texture.sha256
    plan = upload.plan_upload(blend, files, manifest, [texture.sha256, manifest.sha256])
    assert [blob.path for blob in plan.missing] == ["lib/copy.blend", ""]
    assert plan.missing_bytes == texture.size + manifest.size
    nothing = upload.plan_upload(blend, files, manifest, [])
    assert nothing.missing == ()
    assert len(nothing.all_blobs) == 5


def test_pack_without_other_files_has_no_manifest(tmp_path: Path) -> None:
    (tmp_path / "pack").mkdir()
    (tmp_path / "pack" / "shot.blend").write_bytes(b"BLENDER")
    _blend, files, manifest = upload.describe_pack(tmp_path / "pack", "shot.blend")
    assert files == []
    assert manifest is None


def test_hashing_stops_on_cancel(tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    path.write_bytes(b"x" * 3_000_000)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        upload.hash_file(path, cancel)


def test_built_job_passes_farm_validation() -> None:
    options = submission.JobOptions(
        name="shot",
        frames="1-3",
        chunk_size=2,
        priority=70,
        output_dir="/tmp/out",
        output_name="frame_####",
        gpu="require",
        blender_version="5.0.1",
    )
    job = submission.build_job(options, "ab" * 32, "shot.blend", "cd" * 32)
    spec = JobSpec.from_dict(job | {"submitter_node": "node"} | _with_size(job))
    assert spec.settings["manifest_sha256"] == "cd" * 32
    assert spec.settings["blender_version"] == "5.0.1"
    assert spec.settings["overrides"] == {"device": "GPU"}
    assert spec.requirements.gpu == "require"
    # Workers older than the Blender that saved the file do not get the job.
    assert spec.requirements.min_blender == "5.0"
    bad = submission.build_job(
        dataclasses.replace(options, blender_version="five"), "ab" * 32, "a.blend", None
    )
    with pytest.raises(InvalidInput, match="blender_version"):
        JobSpec.from_dict(bad | {"submitter_node": "node"} | _with_size(bad))


def _with_size(job: dict[str, Any]) -> dict[str, Any]:
    return {"settings": job["settings"] | {"blend_size": 1}}


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_client_unreachable_names_address() -> None:
    port = unused_port()
    client = api.FarmClient(f"http://127.0.0.1:{port}", "token", timeout=2)
    with pytest.raises(api.FarmUnreachable) as caught:
        client.farm()
    message = str(caught.value)
    assert f"http://127.0.0.1:{port}" in message
    assert "connection refused" in message
    assert f"TCP port {port}" in message


def test_addon_never_imports_farm_package() -> None:
    for path in sorted(ADDON_DIR.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            for name in names:
                root = name.split(".")[0]
                assert root != "flamenco_p2p", f"{path.name} imports {name}"
                assert root not in {"aiohttp", "zmq", "platformdirs"}, path.name


def test_manifest_toml_lists_every_module() -> None:
    import tomllib

    manifest = tomllib.loads((ADDON_DIR / "blender_manifest.toml").read_text())
    assert manifest["schema_version"] == "1.0.0"
    assert manifest["id"] == ADDON_DIR.name
    assert manifest["blender_version_min"] == "4.2.0"
    assert set(manifest["platforms"]) == {
        "linux-x64",
        "windows-x64",
        "macos-arm64",
        "macos-x64",
    }
    init = (ADDON_DIR / "__init__.py").read_text()
    for path in ADDON_DIR.glob("*.py"):
        if path.stem != "__init__":
            assert f'"{path.stem}"' in init, f"{path.stem} is not reloaded"
    assert json.dumps(manifest)


class _BlobSink(http.server.BaseHTTPRequestHandler):
    """Accepts PUT bodies like a node's blob store, keeping only their sizes."""

    received: ClassVar[list[int]] = []

    def do_PUT(self) -> None:
        length = int(self.headers["Content-Length"])
        body = self.rfile.read(length)
        self.received.append(len(body))
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"sha256": "x", "size": 0}')

    def log_message(self, format: str, *args: Any) -> None:
        return


def test_upload_stops_on_cancel(tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    path.write_bytes(b"x" * 4_000_000)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _BlobSink)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        client = api.FarmClient(url, "token", timeout=5)
        sent = client.put_blob(path, "ab" * 32)
        assert sent == 4_000_000
        assert _BlobSink.received == [4_000_000]
        cancel = threading.Event()
        progress: list[int] = []

        def on_bytes(count: int) -> None:
            progress.append(count)
            cancel.set()

        with pytest.raises(Cancelled):
            client.put_blob(path, "ab" * 32, on_bytes, cancel)
        assert len(progress) == 1
        assert sum(progress) < 4_000_000
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.mark.parametrize(
    ("saved_by", "oldest"),
    [
        ("5.0.1", "5.0"),
        ("4.2", "4.2"),
        ("10.11.3", "10.11"),
        ("5", None),
        ("five", None),
    ],
)
def test_oldest_blender_of_saving_version(saved_by: str, oldest: str | None) -> None:
    assert submission.oldest_blender(saved_by) == oldest
