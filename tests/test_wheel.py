"""``make wheel``: an abi3 manylinux wheel and an sdist that install and run as users get them.

Slow (the wheel is built through the PEP 517 backend in an isolated environment: a few
minutes), but bounded, and run by CI like every test. What it proves:

- ``make wheel`` leaves exactly one wheel and one sdist in ``dist/``, the wheel built from
  the sdist (so the sdist builds), which holds every source file of the checkout; the wheel
  is ``cp311-abi3`` (one wheel for every CPython >= 3.11) with a ``manylinux_2_17`` tag, its
  native module needs nothing newer than glibc 2.17 and is stripped, and its name and
  metadata carry Cargo.toml's version.
- In a fresh venv (``python -m venv``, no site packages), ``pip install --no-index`` with the
  wheel and its dependencies (downloaded from PyPI first) gives a ``golem-vpn`` that imports
  from the venv and runs ``golem-vpn demo --json`` with every step of the report checked and
  nothing left running.
"""

from __future__ import annotations

import email.parser
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from demo_helpers import check_nothing_left, check_report
from test_version import cargo_version

ROOT = Path(__file__).resolve().parent.parent
DIST = ROOT / "dist"
#: The glibc the wheel may need at most (manylinux_2_17).
GLIBC_MAX = (2, 17)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(1800),
    pytest.mark.skipif(
        any(shutil.which(tool) is None for tool in ("make", "cargo")),
        reason="building the wheel needs make and cargo",
    ),
]


@pytest.fixture(scope="module")
def dist() -> tuple[Path, Path]:
    """``make wheel``, once for this module: ``(wheel, sdist)``."""
    done = subprocess.run(
        ["make", "wheel", f"PYTHON={sys.executable}"],
        cwd=ROOT, capture_output=True, text=True, timeout=1500, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    wheels, sdists = sorted(DIST.glob("*.whl")), sorted(DIST.glob("*.tar.gz"))
    assert len(wheels) == 1, wheels
    assert len(sdists) == 1, sdists
    return wheels[0], sdists[0]


def test_the_wheel_is_abi3_manylinux_with_the_one_version(dist: tuple[Path, Path]) -> None:
    wheel, sdist = dist
    version = cargo_version()
    name = re.fullmatch(r"golem_vpn-(.+?)-cp311-abi3-(.+)\.whl", wheel.name)
    assert name is not None, wheel.name
    assert name[1] == version
    assert "manylinux_2_17_" in name[2], name[2]
    assert sdist.name == f"golem_vpn-{version}.tar.gz"
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        info = f"golem_vpn-{version}.dist-info"
        metadata = email.parser.Parser().parsestr(zf.read(f"{info}/METADATA").decode())
        tags = [
            line.split(": ", 1)[1]
            for line in zf.read(f"{info}/WHEEL").decode().splitlines()
            if line.startswith("Tag: ")
        ]
        entry_points = zf.read(f"{info}/entry_points.txt").decode()
        native = zf.read("golem_vpn/_golem_vpn.abi3.so")
    assert metadata["Version"] == version
    assert metadata["Requires-Python"] == ">=3.11"
    assert any(r.startswith("aiohttp") for r in metadata.get_all("Requires-Dist") or [])
    assert all(t.startswith("cp311-abi3-") for t in tags), tags
    assert re.search(r"^golem-vpn\s*=\s*golem_vpn\.cli:main$", entry_points, flags=re.M)
    for needed in (
        "golem_vpn/py.typed",
        "golem_vpn/_golem_vpn.pyi",
        "golem_vpn/cli.py",
        "golem_vpn/demo/cluster.py",
        "golem_vpn/demo/node.py",
        "golem_vpn/demo/payload.py",
    ):
        assert needed in names, needed
    # The symbol versions the native module asks of glibc (auditwheel's check, again).
    sections = elf_sections(native)
    found = re.findall(rb"GLIBC_(\d+)\.(\d+)", sections[".dynstr"])
    wanted = {(int(major), int(minor)) for major, minor in found}
    assert wanted
    assert max(wanted) <= GLIBC_MAX, sorted(wanted)
    assert not {".symtab", ".debug_info"} & set(sections)  # stripped


def elf_sections(elf: bytes) -> dict[str, bytes]:
    """The sections of a 64-bit little-endian ELF file, by name."""
    assert elf[:6] == b"\x7fELF\x02\x01"
    shoff = int.from_bytes(elf[0x28:0x30], "little")
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)
    headers = [
        struct.unpack_from("<IIQQQQ", elf, shoff + i * shentsize)  # name, type, flags, addr,
        for i in range(shnum)  # offset, size
    ]
    names_at = headers[shstrndx][4]
    sections = {}
    for name, _, _, _, offset, size in headers:
        start = names_at + name
        sections[elf[start : elf.index(b"\0", start)].decode()] = elf[offset : offset + size]
    return sections


def test_the_sdist_holds_what_the_build_needs(dist: tuple[Path, Path], tmp_path: Path) -> None:
    _, sdist = dist
    with tarfile.open(sdist) as tf:
        tf.extractall(tmp_path, filter="data")
    (top,) = tmp_path.iterdir()
    for needed in ("Cargo.toml", "Cargo.lock", "pyproject.toml", "README.md", "rust/lib.rs"):
        assert (top / needed).is_file(), needed
    tracked = subprocess.run(
        ["git", "ls-files", "rust", "python/golem_vpn"],
        cwd=ROOT, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    if tracked.returncode == 0:  # a git checkout: every source file made it
        missing = [f for f in tracked.stdout.split() if not (top / f).is_file()]
        assert not missing, missing
    # And it builds: ``make wheel`` made the wheel from this sdist.


def test_the_wheel_installs_in_a_clean_venv_and_runs_the_demo(
    dist: tuple[Path, Path], tmp_path: Path
) -> None:
    wheel, _ = dist
    version = cargo_version()
    venv = tmp_path / "venv"
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"

    def run(*cmd: str | Path, timeout: float = 300) -> str:
        done = subprocess.run(
            [str(c) for c in cmd],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip
        assert done.returncode == 0, f"{cmd}: {done.stdout[-2000:]}{done.stderr[-4000:]}"
        return done.stdout

    run(sys.executable, "-m", "venv", venv)
    # The wheel's dependencies from PyPI, then an offline install of the wheel with them.
    run(python, "-m", "pip", "download", "--quiet", "--dest", tmp_path / "deps", wheel)
    run(python, "-m", "pip", "install", "--quiet", "--no-index", "--find-links",
        tmp_path / "deps", f"golem-vpn=={version}")  # fmt: skip
    where = run(python, "-c", "import golem_vpn; print(golem_vpn.__file__, golem_vpn.__version__)")
    path, imported = where.split()
    assert Path(path).is_relative_to(venv), path  # the wheel's copy, not this checkout's
    assert imported == version
    golem_vpn = venv / "bin" / "golem-vpn"
    assert run(golem_vpn, "version") == f"golem-vpn {version} (release)\n"

    report = json.loads(run(golem_vpn, "demo", "--json", "--size", "8", timeout=180))
    check_report(report, mode="userspace", size=8 << 20)
    check_nothing_left(report)
    assert report["version"] == version
    # Every process of the demo ran the venv's interpreter.
    assert {p["argv"][0] for p in report["teardown"]["processes"]} == {str(python)}
