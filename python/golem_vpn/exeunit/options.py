"""The attach modes and the defaults of their options, on their own so the CLI's parser
(:mod:`golem_vpn.exeunitcli`) can show them without loading the datapath.

:mod:`golem_vpn.exeunit.attach` validates the options and applies these defaults.
"""

from __future__ import annotations

from typing import Literal

__all__ = [
    "DEFAULT_IFNAME",
    "DEFAULT_MTU",
    "DEFAULT_VM_ENDPOINT",
    "MAX_MTU",
    "MIN_MTU",
    "MIN_MTU_V6",
    "MODES",
    "VM_SCHEMES",
    "Mode",
]

Mode = Literal["tun", "vm", "userspace"]
MODES: tuple[Mode, ...] = ("tun", "vm", "userspace")
DEFAULT_IFNAME = "gvpn0"
#: A TUN device's MTU unless told otherwise: the largest packet that crosses a 1500-byte
#: underlay in one datagram on every path (IPv6, relayed: 132 bytes of overhead), so the
#: tunnel never fragments. The same as the native module's ``DEFAULT_TUN_MTU`` (tested).
DEFAULT_MTU = 1368
#: The VM endpoint yagna's ExeUnit makes: a UDP socket on loopback, any free port.
DEFAULT_VM_ENDPOINT = "udp://127.0.0.1:0"
VM_SCHEMES = ("udp://", "tcp-listen://", "tcp-connect://", "unix://")
MIN_MTU, MIN_MTU_V6, MAX_MTU = 576, 1280, 65535
