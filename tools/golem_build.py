"""The package's PEP 517 build backend: maturin's, after building the patched smoltcp.

``pyproject.toml`` names this module (``build-backend = "golem_build"``, ``backend-path =
["tools"]``), so ``pip install .``, ``pip install -e .``, ``python -m build`` and maturin's
own PEP 517 path all run ``tools/patch_smoltcp.py`` first: ``Cargo.toml`` patches smoltcp
with the tree it makes. Every hook is maturin's, unchanged.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import maturin

HERE = Path(__file__).resolve().parent

__all__ = [
    "build_editable",
    "build_sdist",
    "build_wheel",
    "get_requires_for_build_editable",
    "get_requires_for_build_sdist",
    "get_requires_for_build_wheel",
    "prepare_metadata_for_build_editable",
    "prepare_metadata_for_build_wheel",
]

get_requires_for_build_wheel = maturin.get_requires_for_build_wheel
get_requires_for_build_sdist = maturin.get_requires_for_build_sdist
get_requires_for_build_editable = maturin.get_requires_for_build_editable


def _patch_smoltcp() -> None:
    subprocess.run([sys.executable, str(HERE / "patch_smoltcp.py")], check=True)


def build_wheel(
    wheel_directory: str,
    config_settings: Mapping[str, Any] | None = None,
    metadata_directory: str | None = None,
) -> str:
    _patch_smoltcp()
    return maturin.build_wheel(wheel_directory, config_settings, metadata_directory)


def build_editable(
    wheel_directory: str,
    config_settings: Mapping[str, Any] | None = None,
    metadata_directory: str | None = None,
) -> str:
    _patch_smoltcp()
    return maturin.build_editable(wheel_directory, config_settings, metadata_directory)


def build_sdist(sdist_directory: str, config_settings: Mapping[str, Any] | None = None) -> str:
    # maturin reads the dependency graph (cargo metadata), which needs the patched tree.
    _patch_smoltcp()
    return maturin.build_sdist(sdist_directory, config_settings)


def prepare_metadata_for_build_wheel(
    metadata_directory: str, config_settings: Mapping[str, Any] | None = None
) -> str:
    _patch_smoltcp()
    return maturin.prepare_metadata_for_build_wheel(metadata_directory, config_settings)


def prepare_metadata_for_build_editable(
    metadata_directory: str, config_settings: Mapping[str, Any] | None = None
) -> str:
    _patch_smoltcp()
    return maturin.prepare_metadata_for_build_editable(metadata_directory, config_settings)
