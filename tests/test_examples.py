"""The examples run and do what they say."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _run(name: str, timeout: float = 60) -> str:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_runtime_router_example() -> None:
    out = _run("runtime_router.py")
    assert "send 32 bytes to 0x" + "cc" * 20 in out
    assert "spoofed reply: None -> {'spoofed_source': 1}" in out


def test_requestor_sdk_example() -> None:
    out = _run("requestor_sdk.py")
    assert "'nodeIp': '192.168.0.2'" in out
    assert "payload answered: HELLO THROUGH THE GATE" in out


_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("ip") is not None


@pytest.mark.skipif(
    not _ROOT or shutil.which("sshd") is None or shutil.which("ssh") is None,
    reason="needs root, iproute2 and openssh (server and client)",
)
@pytest.mark.timeout(180)
def test_ssh_terminal_example() -> None:
    out = _run("ssh_terminal.py", timeout=170)
    # Through the gate from the requestor, and straight over the VPN from provider 2.
    assert out.count("connected to 192.168.80.2") == 2, out
    assert out.count("192.168.80.2/24") >= 2


@pytest.mark.skipif(not _ROOT or shutil.which("curl") is None, reason="needs root and curl")
@pytest.mark.timeout(180)
def test_http_proxy_example() -> None:
    out = _run("http_proxy.py", timeout=170)
    answers = [line.split(" -> ")[1] for line in out.splitlines() if line.startswith("GET ")]
    assert len(answers) == 6
    # Round robin over the three providers, twice.
    assert [a.split(" (")[0] for a in answers] == [
        f"hello from provider {i}" for i in (1, 2, 3)
    ] * 2
