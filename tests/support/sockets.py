"""Which addresses a local TCP port listens on, read from the kernel's socket tables (/proc/net):
a bind-address test needs no second network interface."""

from __future__ import annotations

import ipaddress
from pathlib import Path

_LISTEN = "0A"


def _address(hex_address: str) -> str:
    raw = bytes.fromhex(hex_address)
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw[::-1]))
    # IPv6: four 32-bit words, each in host (little-endian) order; a v4-mapped address (an IPv6 socket
    # bound to an IPv4 address, as gRPC binds one) is the IPv4 address it maps
    address = ipaddress.IPv6Address(b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))
    return str(address.ipv4_mapped or address)


def listening_addresses(port: int) -> set[str]:
    """Addresses with a socket in LISTEN state on `port` ('0.0.0.0', '127.0.0.1', '::', ...)."""
    found: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        path = Path(table)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            local, state = fields[1], fields[3]
            address, _, hex_port = local.partition(":")
            if state == _LISTEN and int(hex_port, 16) == port:
                found.add(_address(address))
    return found
