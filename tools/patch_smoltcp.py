#!/usr/bin/env python3
"""Builds the patched smoltcp that Cargo.toml's ``[patch.crates-io]`` points at.

smoltcp comes from crates.io; the project's changes to it are a series of patches in
``patches/smoltcp/`` (``git format-patch`` output, applied in file-name order), each written
to be sent upstream. This script takes the pristine release crate (from Cargo's download
cache, else from static.crates.io), checks its SHA-256, extracts it, applies the patches and
leaves the result in ``target/patched/smoltcp-<version>``, stamped with a digest of the crate
and the patches: when nothing changed, a run does nothing. Every entry point that builds the
crate runs it first (the Makefile's targets, and ``pip install`` through the in-tree build
backend ``tools/golem_build.py``); run it by hand before a bare ``cargo`` command on a fresh
clone or after ``cargo clean``.

Standard library only; patches are applied by a small unified-diff applier here (exact
context, no fuzz), so neither ``git`` nor ``patch`` is needed.

Usage: ``python3 tools/patch_smoltcp.py [--force] [--check] [--workdir DIR]``

``--workdir DIR`` makes a git repository of the pristine crate with the series applied as
commits (``git am``), for working on the patches; ``git format-patch --zero-commit
--no-signature -o patches/smoltcp HEAD~N`` writes them back.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

CRATE = "smoltcp"
VERSION = "0.14.0"
# The release's checksum, as crates.io's index (and a Cargo.lock without the patch) has it.
SHA256 = "b6f8b28ad56c6e35524a37dd492af5d1a47e31e1a4d175cd12f89c075f01980f"
URL = f"https://static.crates.io/crates/{CRATE}/{CRATE}-{VERSION}.crate"

ROOT = Path(__file__).resolve().parent.parent
PATCHES = ROOT / "patches" / CRATE
OUT = ROOT / "target" / "patched" / f"{CRATE}-{VERSION}"
STAMP = ".golem-vpn-patches"


class PatchError(Exception):
    """A patch does not apply, or the crate cannot be had."""


# --- the pristine crate -----------------------------------------------------------------


def cargo_home() -> Path:
    return Path(os.environ.get("CARGO_HOME") or Path.home() / ".cargo")


def fetch_crate() -> bytes:
    """The release's ``.crate`` file: Cargo's cache if it has it, else a download."""
    name = f"{CRATE}-{VERSION}.crate"
    for cached in sorted((cargo_home() / "registry" / "cache").glob(f"*/{name}")):
        data = cached.read_bytes()
        if hashlib.sha256(data).hexdigest() == SHA256:
            return data
    print(f"patch_smoltcp: downloading {URL}", file=sys.stderr)
    try:
        with urllib.request.urlopen(URL, timeout=60) as response:
            data = response.read()
    except OSError as e:
        raise PatchError(f"cannot download {URL}: {e}") from e
    digest = hashlib.sha256(data).hexdigest()
    if digest != SHA256:
        raise PatchError(f"{URL}: SHA-256 {digest}, expected {SHA256}")
    return data


def extract(crate: bytes, into: Path) -> Path:
    """Extracts the crate's one top directory into ``into``; returns it."""
    top = f"{CRATE}-{VERSION}"
    with tarfile.open(fileobj=io.BytesIO(crate), mode="r:gz") as tar:
        for member in tar.getmembers():
            parts = Path(member.name).parts
            if not parts or parts[0] != top or ".." in parts or Path(member.name).is_absolute():
                raise PatchError(f"unexpected path in the crate: {member.name}")
            if not (member.isfile() or member.isdir()):
                raise PatchError(f"unexpected entry in the crate: {member.name}")
        if hasattr(tarfile, "data_filter"):  # Python 3.11.4+
            tar.extractall(into, filter="data")
        else:
            tar.extractall(into)  # every member was checked above
    return into / top


# --- a unified-diff applier ---------------------------------------------------------------


@dataclass
class Hunk:
    old_start: int
    old: list[str] = field(default_factory=list)  # lines as they are (context and removed)
    new: list[str] = field(default_factory=list)  # lines as they become


@dataclass
class FilePatch:
    old_path: str | None  # None: a new file
    new_path: str | None  # None: a deleted file
    hunks: list[Hunk] = field(default_factory=list)


HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


def _path(text: str) -> str | None:
    text = text.split("\t", 1)[0].strip()
    if text == "/dev/null":
        return None
    if not text.startswith(("a/", "b/")):
        raise PatchError(f"unexpected path {text!r} (patches are -p1)")
    return text[2:]


def parse(text: str) -> list[FilePatch]:
    """The file changes of a ``git format-patch`` file (the message is skipped)."""
    lines = text.splitlines(keepends=True)
    files: list[FilePatch] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ "):
            current = FilePatch(_path(line[4:]), _path(lines[i + 1][4:]))
            files.append(current)
            i += 2
            while i < len(lines) and (m := HUNK.match(lines[i])):
                hunk = Hunk(int(m.group(1)))
                old_left = int(m.group(2) or "1")
                new_left = int(m.group(4) or "1")
                i += 1
                tag = " "
                while old_left or new_left or (i < len(lines) and lines[i].startswith("\\")):
                    if i >= len(lines):
                        raise PatchError("truncated hunk")
                    body = lines[i]
                    i += 1
                    if body.startswith("\\"):
                        # "\ No newline at end of file": about the line before it.
                        for side in (hunk.old, hunk.new):
                            if (tag != "+" and side is hunk.old) or (
                                tag != "-" and side is hunk.new
                            ):
                                side[-1] = side[-1].rstrip("\r\n")
                        continue
                    tag, content = body[:1], body[1:]
                    if body in ("\n", "\r\n"):  # an empty context line, its space stripped
                        tag, content = " ", body
                    if tag == " ":
                        hunk.old.append(content)
                        hunk.new.append(content)
                        old_left -= 1
                        new_left -= 1
                    elif tag == "-":
                        hunk.old.append(content)
                        old_left -= 1
                    elif tag == "+":
                        hunk.new.append(content)
                        new_left -= 1
                    else:
                        raise PatchError(f"unexpected line in hunk: {body!r}")
                    if old_left < 0 or new_left < 0:
                        raise PatchError("hunk longer than its header says")
                current.hunks.append(hunk)
            continue
        i += 1
    return files


def apply_file(lines: list[str], hunks: list[Hunk], name: str) -> list[str]:
    """Applies hunks to a file's lines: exact context, shifted by at most 100 lines."""
    out = list(lines)
    shift = 0
    for hunk in hunks:
        want = max(hunk.old_start - 1, 0) + shift
        for delta in sorted(range(-100, 101), key=abs):
            at = want + delta
            if 0 <= at <= len(out) - len(hunk.old) and out[at : at + len(hunk.old)] == hunk.old:
                break
        else:
            raise PatchError(f"{name}: hunk at line {hunk.old_start} does not apply")
        out[at : at + len(hunk.old)] = hunk.new
        shift = at - (hunk.old_start - 1) + len(hunk.new) - len(hunk.old)
    return out


def apply_patch(tree: Path, patch: Path) -> None:
    for change in parse(patch.read_text(encoding="utf-8")):
        if change.new_path is None:
            assert change.old_path is not None
            (tree / change.old_path).unlink()
            continue
        target = tree / change.new_path
        if change.old_path is None:
            if target.exists():
                raise PatchError(f"{patch.name}: {change.new_path} already exists")
            lines: list[str] = []
        else:
            source = tree / change.old_path
            lines = source.read_text(encoding="utf-8").splitlines(keepends=True)
            if change.old_path != change.new_path:
                source.unlink()
        result = apply_file(lines, change.hunks, f"{patch.name}: {change.new_path}")
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("w", encoding="utf-8", newline="") as f:
            f.writelines(result)


# --- the patched tree ---------------------------------------------------------------------


def series() -> list[Path]:
    return sorted(PATCHES.glob("*.patch"))


def check_manifest() -> None:
    """Cargo.toml must point at the tree this script makes (both name the version)."""
    manifest = tomllib.loads((ROOT / "Cargo.toml").read_text())
    path = manifest.get("patch", {}).get("crates-io", {}).get(CRATE, {}).get("path")
    want = OUT.relative_to(ROOT).as_posix()
    if path != want:
        raise PatchError(f"Cargo.toml's [patch.crates-io] {CRATE} path is {path!r}, not {want!r}")


def workdir(into: Path) -> None:
    """A git repository of the pristine crate, the series applied as commits."""
    if into.exists():
        raise PatchError(f"{into} exists")
    into.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=into.parent) as tmp:
        extract(fetch_crate(), Path(tmp)).rename(into)
    git = ["git", "-c", "user.name=patch_smoltcp", "-c", "user.email=patch_smoltcp@invalid"]
    subprocess.run([*git, "init", "-q"], cwd=into, check=True)
    subprocess.run([*git, "add", "-A"], cwd=into, check=True)
    subprocess.run([*git, "commit", "-qm", f"{CRATE} {VERSION} (crates.io)"], cwd=into, check=True)
    if series():
        subprocess.run([*git, "am", "-q", *map(str, series())], cwd=into, check=True)


def stamp() -> str:
    """What the patched tree is made of: the crate and every patch, in order."""
    h = hashlib.sha256(f"{CRATE} {VERSION} {SHA256}\n".encode())
    for patch in series():
        h.update(patch.name.encode() + b"\0" + patch.read_bytes() + b"\0")
    return h.hexdigest()


def up_to_date() -> bool:
    try:
        return (OUT / STAMP).read_text().strip() == stamp()
    except OSError:
        return False


def build() -> None:
    """Makes ``OUT`` from scratch, then swaps it in (a failed run leaves no half tree)."""
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=OUT.parent, prefix=".build-") as tmp:
        tree = extract(fetch_crate(), Path(tmp))
        for patch in series():
            apply_patch(tree, patch)
        (tree / STAMP).write_text(stamp() + "\n")
        if OUT.exists():
            shutil.rmtree(OUT)
        tree.rename(OUT)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    parser.add_argument(
        "--check", action="store_true", help="only report whether the tree is up to date"
    )
    parser.add_argument(
        "--workdir", type=Path, help="make a git repository of the series here, to edit it"
    )
    args = parser.parse_args(argv)
    if args.workdir:
        try:
            workdir(args.workdir)
        except PatchError as e:
            print(f"patch_smoltcp: {e}", file=sys.stderr)
            return 1
        return 0
    if args.check:
        fresh = up_to_date()
        print(f"{OUT.relative_to(ROOT)}: {'up to date' if fresh else 'missing or stale'}")
        return 0 if fresh else 1
    if args.force or not up_to_date():
        try:
            check_manifest()
            build()
        except PatchError as e:
            print(f"patch_smoltcp: {e}", file=sys.stderr)
            return 1
        names = ", ".join(p.name.split("-", 1)[0] for p in series()) or "none"
        print(f"patch_smoltcp: {OUT.relative_to(ROOT)} built (patches {names})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
