"""Checks that mDNS multicast can work on the chosen interfaces, and picks them."""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import socket
import struct
from collections.abc import Sequence

from flamenco_p2p.errors import ConfigError

MDNS_GROUP = "224.0.0.251"
MDNS_PORT = 5353
LOOPBACK_INTERFACE = "127.0.0.1"

# Linux ioctls and interface flags from <linux/sockios.h> and <net/if.h>.
_SIOCGIFFLAGS = 0x8913
_SIOCGIFADDR = 0x8915
_IFF_UP = 0x1
_IFF_LOOPBACK = 0x8
_IFF_MULTICAST = 0x1000


def check_multicast(interfaces: Sequence[str]) -> str | None:
    """Join the mDNS group on each interface, returning None or the failure and fix."""
    if not interfaces:
        return (
            "no interfaces given for mDNS; pass interface addresses or configure seeds"
        )
    for address in interfaces:
        problem = _check_interface(address)
        if problem is not None:
            return problem
    return None


def default_interfaces(bind_address: str) -> list[str]:
    """Return the mDNS interface addresses for a node whose sockets bind this IPv4."""
    try:
        parsed = ipaddress.IPv4Address(bind_address)
    except ValueError:
        raise ConfigError(
            f"bind address {bind_address!r} is not an IPv4 address; "
            "set one such as 127.0.0.2 or the LAN address of this machine"
        ) from None
    if parsed.is_unspecified:
        raise ConfigError(
            f"bind address {bind_address!r} names no single interface, so mDNS would "
            "announce on every network; set the address of one interface"
        )
    if parsed.is_loopback:
        # zeroconf cannot bind each 127.0.0.N separately, but nodes on 127.0.0.N
        # all reach each other through the group joined on 127.0.0.1.
        return [LOOPBACK_INTERFACE]
    return [bind_address]


def _check_interface(address: str) -> str | None:
    try:
        packed = socket.inet_aton(address)
        ipaddress.IPv4Address(address)
    except (OSError, ValueError):
        return (
            f"mDNS interface {address!r} is not an IPv4 address; "
            "pass the IPv4 address of a local interface"
        )
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    try:
        # zeroconf binds the mDNS port shared with other responders the same way.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        step = "bind UDP port 5353"
        sock.bind(("", MDNS_PORT))
        step = f"join group {MDNS_GROUP}"
        membership = socket.inet_aton(MDNS_GROUP) + packed
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
        step = "select it for sending multicast"
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, packed)
    except OSError as error:
        return _describe_failure(address, step, error)
    finally:
        sock.close()
    # Joining succeeds even on a device that is down or has multicast off, so
    # read the device flags too.
    return _check_flags(address)


def _check_flags(address: str) -> str | None:
    device = _find_device(address)
    if device is None:
        return None
    name, flags = device
    if not flags & _IFF_UP:
        return (
            f"mDNS interface {address} ({name}) is down; bring it up with "
            f"'ip link set dev {name} up'"
        )
    # Loopback delivers multicast without the MULTICAST flag (Linux default).
    if not flags & (_IFF_MULTICAST | _IFF_LOOPBACK):
        return (
            f"mDNS interface {address} ({name}) has multicast off; enable it with "
            f"'ip link set dev {name} multicast on', or configure seed addresses"
        )
    return None


def _describe_failure(address: str, step: str, error: OSError) -> str:
    code = errno.errorcode.get(error.errno or 0, str(error.errno))
    found = _find_device(address)
    device = found[0] if found else None
    where = f"interface {address} ({device})" if device else f"interface {address}"
    if error.errno == errno.EADDRINUSE:
        fix = (
            "another program holds UDP port 5353 without SO_REUSEPORT; stop it, "
            "or configure seed addresses"
        )
    elif error.errno == errno.ENODEV and device is None:
        fix = "no local interface has this address; pass the address of one"
    elif error.errno in (errno.ENODEV, errno.EADDRNOTAVAIL, errno.ENOBUFS):
        fix = (
            f"enable multicast with 'ip link set dev {device or 'DEVICE'} multicast "
            "on', check that the firewall allows UDP 5353, or configure seed "
            "addresses"
        )
    else:
        fix = (
            "check that the firewall allows UDP 5353 and the interface is up, "
            "or configure seed addresses"
        )
    return f"mDNS cannot {step} on {where}: {code} ({error.strerror}); {fix}"


def _find_device(address: str) -> tuple[str, int] | None:
    """Find the Linux device whose primary IPv4 address this is, with its flags."""
    # NOTE: SIOCGIFADDR returns only the primary address of each device, so an
    # address added as secondary is not found and its flags go unchecked.
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for _, name in socket.if_nameindex():
            request = struct.pack("256s", name.encode()[:15])
            try:
                reply = fcntl.ioctl(probe.fileno(), _SIOCGIFADDR, request)
                if socket.inet_ntoa(reply[20:24]) != address:
                    continue
                reply = fcntl.ioctl(probe.fileno(), _SIOCGIFFLAGS, request)
            except OSError:
                continue
            (flags,) = struct.unpack_from("H", reply, 16)
            return name, flags
    finally:
        probe.close()
    return None
