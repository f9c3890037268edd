"""A node warns of a peer whose wall clock is far off, and only now and then."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from flamenco_p2p.config import NodeConfig
from flamenco_p2p.farmkey import new_farm_key, save_farm_key
from flamenco_p2p.node import Node

PEER = "e" * 32


def test_clock_skew_warns_once_per_peer(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    save_farm_key(tmp_path, new_farm_key("skew"))
    node = Node(NodeConfig(data_dir=tmp_path, mdns=False), {})
    try:
        caplog.set_level(logging.WARNING, logger="flamenco_p2p.node")
        node._check_skew(PEER, time.time() + 5.0, 100.0)
        assert caplog.records == []
        node._check_skew(PEER, time.time() - 3 * 3600, 100.0)
        assert len(caplog.records) == 1
        message = caplog.records[0].getMessage()
        assert PEER in message
        assert "-10800 s off" in message
        # The same peer again within 10 minutes: no second warning.
        node._check_skew(PEER, time.time() - 3 * 3600, 300.0)
        assert len(caplog.records) == 1
        node._check_skew(PEER, time.time() - 3 * 3600, 800.0)
        assert len(caplog.records) == 2
        # Heartbeats of older nodes carry no wall clock.
        node._check_skew("f" * 32, None, 800.0)
        assert len(caplog.records) == 2
    finally:
        node.ctx.destroy(linger=0)
