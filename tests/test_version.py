"""The version has one source, Cargo.toml: the native module, the installed package's metadata
(maturin's dynamic version), ``golem-vpn version`` and ``--version`` all say the same.
``test_wheel.py`` checks the wheel's name and metadata against it too."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import tomllib
from pathlib import Path

import golem_vpn

ROOT = Path(__file__).resolve().parent.parent


def cargo_version() -> str:
    """Cargo.toml's ``package.version``, the one place the version is written."""
    with (ROOT / "Cargo.toml").open("rb") as f:
        version: str = tomllib.load(f)["package"]["version"]
    return version


def test_pyproject_takes_the_version_from_cargo() -> None:
    with (ROOT / "pyproject.toml").open("rb") as f:
        project = tomllib.load(f)["project"]
    assert "version" not in project
    assert "version" in project["dynamic"]


def test_every_place_says_the_same_version() -> None:
    version = cargo_version()
    assert golem_vpn.__version__ == version
    assert importlib.metadata.version("golem-vpn") == version
    shown = subprocess.run(
        [sys.executable, "-m", "golem_vpn", "version"],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    assert shown.stdout == f"golem-vpn {version} ({golem_vpn.build_profile})\n"
    flag = subprocess.run(
        [sys.executable, "-m", "golem_vpn", "--version"],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    assert flag.stdout == f"golem-vpn {version}\n"
