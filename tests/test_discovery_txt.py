"""Tests for the TXT advert encoding, seed parsing and mDNS interface checks."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flamenco_p2p.discovery import (
    PROTOCOL_VERSION,
    Advert,
    PeerSighting,
    check_multicast,
    decode_txt,
    default_interfaces,
    encode_txt,
    parse_seed,
)
from flamenco_p2p.errors import ConfigError, ProtocolError

NODE_ID = "0123456789abcdef0123456789abcdef"
FARM_ID = "fedcba9876543210"


def make_advert(**changes: object) -> Advert:
    advert = Advert(
        node_id=NODE_ID,
        farm_id=FARM_ID,
        site="Studio A — floor 2",
        address="127.0.0.11",
        node_port=7000,
        roles={"manager": 3, "server": 2},
        capabilities="cpu=8;gpu=CUDA,OPTIX;blender=5.0.1",
    )
    return dataclasses.replace(advert, **changes)  # type: ignore[arg-type]


def as_wire(properties: dict[str, str]) -> dict[bytes, bytes | None]:
    return {key.encode(): value.encode() for key, value in properties.items()}


def test_txt_round_trip() -> None:
    advert = make_advert()
    sighting = decode_txt(as_wire(encode_txt(advert)), ["127.0.0.11"], 7000)
    assert sighting == PeerSighting(
        node_id=NODE_ID,
        farm_id=FARM_ID,
        site="Studio A — floor 2",
        address="127.0.0.11",
        node_port=7000,
        roles={"manager": 3, "server": 2},
        capabilities="cpu=8;gpu=CUDA,OPTIX;blender=5.0.1",
        protocol=PROTOCOL_VERSION,
        source="mdns",
    )


def test_txt_round_trip_no_roles() -> None:
    advert = make_advert(roles={}, site="", capabilities="")
    sighting = decode_txt(as_wire(encode_txt(advert)), ["10.0.0.5"], 1)
    assert sighting.roles == {}
    assert sighting.site == ""
    assert sighting.address == "10.0.0.5"


def test_txt_encoding_keys() -> None:
    properties = encode_txt(make_advert())
    assert properties == {
        "v": "1",
        "id": NODE_ID,
        "farm": FARM_ID,
        "site": "Studio A — floor 2",
        "roles": "manager:3,server:2",
        "caps": "cpu=8;gpu=CUDA,OPTIX;blender=5.0.1",
    }


def test_txt_http_port_round_trip() -> None:
    properties = encode_txt(make_advert(http_port=8888))
    assert properties["http"] == "8888"
    sighting = decode_txt(as_wire(properties), ["127.0.0.11"], 7000)
    assert sighting.http_port == 8888
    # Adverts of nodes without an HTTP API carry no key, and decode to None.
    plain = decode_txt(as_wire(encode_txt(make_advert())), ["127.0.0.11"], 7000)
    assert plain.http_port is None


@pytest.mark.parametrize("value", [b"0", b"65536", b"-1", b"88a", b"", b"1e3"])
def test_decode_txt_rejects_bad_http_port(value: bytes) -> None:
    wire = as_wire(encode_txt(make_advert())) | {b"http": value}
    with pytest.raises(ProtocolError, match="'http'"):
        decode_txt(wire, ["127.0.0.11"], 7000)


def test_txt_decode_address_bytes_and_ipv6_skipped() -> None:
    wire = as_wire(encode_txt(make_advert()))
    sighting = decode_txt(wire, ["fe80::1", b"\x0a\x00\x00\x07"], 7000)
    assert sighting.address == "10.0.0.7"


def test_txt_decode_ignores_unknown_keys() -> None:
    wire = as_wire(encode_txt(make_advert()))
    wire[b"future"] = b"something"
    wire[b"flag"] = None
    assert decode_txt(wire, ["127.0.0.11"], 7000).node_id == NODE_ID


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"node_id": "0123"}, "id"),
        ({"node_id": NODE_ID.upper()}, "id"),
        ({"farm_id": "abc"}, "farm"),
        ({"farm_id": "g" * 16}, "farm"),
        ({"site": "x" * 65}, "site"),
        ({"site": "tab\there"}, "site"),
        ({"address": "localhost"}, "address"),
        ({"address": "0.0.0.0"}, "address"),
        ({"address": "224.0.0.251"}, "address"),
        ({"node_port": 0}, "node_port"),
        ({"node_port": 70000}, "node_port"),
        ({"roles": {"Manager": 1}}, "roles"),
        ({"roles": {"manager": -1}}, "roles"),
        ({"roles": {"manager": 2**63}}, "roles"),
        ({"roles": {f"r{i}": 1 for i in range(17)}}, "roles"),
        ({"capabilities": "gpu=é"}, "caps"),
        ({"capabilities": "x" * 241}, "caps"),
        ({"protocol": 0}, "v"),
    ],
)
def test_encode_txt_rejects_bad_field(changes: dict[str, object], key: str) -> None:
    with pytest.raises(ValueError, match=f"'{key}'"):
        encode_txt(make_advert(**changes))


def test_encode_txt_rejects_item_over_255_bytes() -> None:
    roles = {f"role-with-a-long-name-{i:02}": 2**62 for i in range(6)}
    with pytest.raises(ValueError, match=r"TXT item 'roles' is \d+ bytes"):
        encode_txt(make_advert(roles=roles))


def test_encode_txt_accepts_item_of_255_bytes() -> None:
    capabilities = "x" * 240
    properties = encode_txt(make_advert(capabilities=capabilities))
    assert len(f"caps={properties['caps']}".encode()) == 245


def test_encode_txt_total_stays_under_limit() -> None:
    # The largest values that each field allows still fit in the record.
    advert = make_advert(
        farm_id="a" * 64,
        site="é" * 32,
        roles={f"r{i:02}": 2**63 - 1 for i in range(10)},
        capabilities="x" * 240,
    )
    total = sum(1 + len(f"{k}={v}".encode()) for k, v in encode_txt(advert).items())
    assert total <= 1300


@pytest.mark.parametrize(
    ("key", "value"),
    [
        (b"id", None),
        (b"id", b"zz"),
        (b"farm", b""),
        (b"site", b"\xff\xfe"),
        (b"site", b"a\nb"),
        (b"roles", b"manager"),
        (b"roles", b"manager:x"),
        (b"roles", b"manager:1,manager:2"),
        (b"roles", b"manager:99999999999999999999"),
        (b"caps", b"x" * 256),
        (b"v", b"one"),
        (b"v", b"0"),
        (b"v", b"-1"),
    ],
)
def test_decode_txt_rejects_bad_value(key: bytes, value: bytes | None) -> None:
    wire = as_wire(encode_txt(make_advert()))
    wire[key] = value
    with pytest.raises(ProtocolError) as caught:
        decode_txt(wire, ["127.0.0.11"], 7000)
    assert caught.value.field == key.decode()


@pytest.mark.parametrize("key", [b"v", b"id", b"farm", b"site", b"roles", b"caps"])
def test_decode_txt_rejects_missing_key(key: bytes) -> None:
    wire = as_wire(encode_txt(make_advert()))
    del wire[key]
    with pytest.raises(ProtocolError, match="missing") as caught:
        decode_txt(wire, ["127.0.0.11"], 7000)
    assert caught.value.field == key.decode()


@pytest.mark.parametrize(
    ("addresses", "port", "field"),
    [
        ([], 7000, "address"),
        (["::1"], 7000, "address"),
        (["0.0.0.0"], 7000, "address"),
        ([b"\x01\x02"], 7000, "address"),
        (["127.0.0.11"], 0, "port"),
        (["127.0.0.11"], 65536, "port"),
    ],
)
def test_decode_txt_rejects_bad_address_or_port(
    addresses: list[str | bytes], port: int, field: str
) -> None:
    wire = as_wire(encode_txt(make_advert()))
    with pytest.raises(ProtocolError) as caught:
        decode_txt(wire, addresses, port)
    assert caught.value.field == field


_TXT_KEYS = st.sampled_from([b"v", b"id", b"farm", b"site", b"roles", b"caps"])
_ANY_KEY = st.one_of(_TXT_KEYS, st.binary(max_size=10))
_ANY_VALUE = st.one_of(st.none(), st.binary(max_size=300))
_ANY_ADDRESS = st.one_of(
    st.binary(max_size=6), st.text(max_size=20), st.ip_addresses().map(str)
)


@given(
    properties=st.dictionaries(_ANY_KEY, _ANY_VALUE, max_size=10),
    addresses=st.lists(_ANY_ADDRESS, max_size=3),
    port=st.integers(min_value=-10, max_value=70000),
)
def test_decode_txt_fuzz_random_dicts(
    properties: dict[bytes, bytes | None], addresses: list[str | bytes], port: int
) -> None:
    try:
        sighting = decode_txt(properties, addresses, port)
    except ProtocolError:
        return
    assert len(sighting.node_id) == 32
    assert 1 <= sighting.node_port <= 65535


@given(
    key=_TXT_KEYS,
    value=st.one_of(
        st.none(),
        st.binary(max_size=300),
        st.text(alphabet="0123456789abcdefmr:,-_", max_size=80).map(str.encode),
    ),
)
def test_decode_txt_fuzz_one_value(key: bytes, value: bytes | None) -> None:
    wire = as_wire(encode_txt(make_advert()))
    wire[key] = value
    try:
        sighting = decode_txt(wire, ["127.0.0.11"], 7000)
    except ProtocolError as error:
        assert error.field == key.decode()
        return
    # Whatever decodes must encode again, so a peer never passes on a bad advert.
    advert = Advert(
        node_id=sighting.node_id,
        farm_id=sighting.farm_id,
        site=sighting.site,
        address=sighting.address,
        node_port=sighting.node_port,
        roles=sighting.roles,
        capabilities=sighting.capabilities,
        protocol=sighting.protocol,
    )
    encode_txt(advert)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("render-01", ("render-01", 7000)),
        ("render-01.lan:7100", ("render-01.lan", 7100)),
        ("  192.0.2.10:7001 ", ("192.0.2.10", 7001)),
        ("192.0.2.10", ("192.0.2.10", 7000)),
        ("[2001:db8::1]:7002", ("2001:db8::1", 7002)),
        ("[2001:db8::1]", ("2001:db8::1", 7000)),
        ("2001:db8::1", ("2001:db8::1", 7000)),
        ("host.example.", ("host.example.", 7000)),
    ],
)
def test_parse_seed_valid(text: str, expected: tuple[str, int]) -> None:
    assert parse_seed(text, 7000) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("host:", "port ''"),
        ("host:0", "port '0'"),
        ("host:65536", "port '65536'"),
        ("host:http", "port 'http'"),
        ("[2001:db8::1", "closing"),
        ("[2001:db8::1]7000", "after ']'"),
        ("[not-v6]:7000", "not an IPv6"),
        ("bad_host:7000", "not an IP address or host name"),
        ("-bad:7000", "not an IP address or host name"),
        ("1.2.3.999", "not an IP address or host name"),
        ("a" * 64 + ".lan", "not an IP address or host name"),
    ],
)
def test_parse_seed_invalid(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        parse_seed(text, 7000)
    assert repr(text) in str(caught.value)


def test_parse_seed_bad_default_port() -> None:
    with pytest.raises(ConfigError, match="default seed port 0"):
        parse_seed("host", 0)


@pytest.mark.parametrize(
    ("bind_address", "expected"),
    [
        ("127.0.0.1", ["127.0.0.1"]),
        ("127.0.0.12", ["127.0.0.1"]),
        ("127.200.1.1", ["127.0.0.1"]),
        ("10.231.0.10", ["10.231.0.10"]),
    ],
)
def test_default_interfaces_choice(bind_address: str, expected: list[str]) -> None:
    assert default_interfaces(bind_address) == expected


@pytest.mark.parametrize("bind_address", ["0.0.0.0", "::1", "localhost", ""])
def test_default_interfaces_rejects(bind_address: str) -> None:
    with pytest.raises(ConfigError, match=repr(bind_address)):
        default_interfaces(bind_address)


def test_check_multicast_loopback_ok() -> None:
    assert check_multicast(["127.0.0.1"]) is None


def test_check_multicast_unknown_address() -> None:
    # 203.0.113.0/24 is TEST-NET-3, so no local interface has it and the join fails.
    message = check_multicast(["127.0.0.1", "203.0.113.7"])
    assert message is not None
    assert "203.0.113.7" in message
    assert "ENODEV" in message
    assert "pass the address of one" in message


def test_check_multicast_not_an_address() -> None:
    message = check_multicast(["eth0"])
    assert message is not None
    assert "'eth0' is not an IPv4 address" in message


def test_check_multicast_empty() -> None:
    message = check_multicast([])
    assert message is not None
    assert "configure seeds" in message
