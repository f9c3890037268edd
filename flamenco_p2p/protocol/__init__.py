"""Wire format of node-to-node messages: msgpack maps over ZeroMQ."""

from flamenco_p2p.protocol.messages import PROTOCOL_VERSION, Message, pack, unpack

__all__ = ["PROTOCOL_VERSION", "Message", "pack", "unpack"]
