"""The examples run and do what they say."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _run(name: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        timeout=60,
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
