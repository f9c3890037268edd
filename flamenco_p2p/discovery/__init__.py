"""Peer discovery: mDNS adverts on the local network and seed addresses from config."""

from __future__ import annotations

from flamenco_p2p.discovery.mdns import MdnsDiscovery
from flamenco_p2p.discovery.multicast import check_multicast, default_interfaces
from flamenco_p2p.discovery.seeds import parse_seed
from flamenco_p2p.discovery.txt import (
    PROTOCOL_VERSION,
    SERVICE_TYPE,
    Advert,
    PeerSighting,
    decode_txt,
    encode_txt,
)

__all__ = [
    "PROTOCOL_VERSION",
    "SERVICE_TYPE",
    "Advert",
    "MdnsDiscovery",
    "PeerSighting",
    "check_multicast",
    "decode_txt",
    "default_interfaces",
    "encode_txt",
    "parse_seed",
]
