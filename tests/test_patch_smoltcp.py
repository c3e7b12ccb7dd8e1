"""tools/patch_smoltcp.py: its unified-diff applier, and the series on the pristine crate.

The patched smoltcp that Cargo.toml points at is made by this script on every build; these
tests pin down how it applies a patch (exact context, new files, missing final newlines,
refusing what does not match) and that the committed series applies to the pinned release
and yields the tree the build uses.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "patch_smoltcp", ROOT / "tools" / "patch_smoltcp.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


ps = _load()

PATCH = """\
From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001
From: someone <someone@invalid>
Subject: [PATCH] change things

A message, with a line that looks like a diff:
--- not a file
---
 a | 2 +-

diff --git a/a b/a
index 1111111..2222222 100644
--- a/a
+++ b/a
@@ -1,4 +1,5 @@
 one
-two
+TWO
+two and a half
 three

@@ -8,3 +9,3 @@ context
 eight
 nine
-ten
\\ No newline at end of file
+ten
diff --git a/sub/new b/sub/new
new file mode 100644
index 0000000..3333333
--- /dev/null
+++ b/sub/new
@@ -0,0 +1,2 @@
+fresh
+file
diff --git a/gone b/gone
deleted file mode 100644
index 4444444..0000000
--- a/gone
+++ /dev/null
@@ -1 +0,0 @@
-bye
--\x20
2.47.3
"""


def _tree(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "a").write_text("one\ntwo\nthree\n\nfive\nsix\nseven\neight\nnine\nten")
    (tree / "gone").write_text("bye\n")
    return tree


def test_applies_changes_new_files_deletions_and_final_newlines(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    patch = tmp_path / "0001-change.patch"
    patch.write_text(PATCH)
    ps.apply_patch(tree, patch)
    assert (tree / "a").read_text() == (
        "one\nTWO\ntwo and a half\nthree\n\nfive\nsix\nseven\neight\nnine\nten\n"
    )
    assert (tree / "sub" / "new").read_text() == "fresh\nfile\n"
    assert not (tree / "gone").exists()


def test_a_hunk_finds_its_place_when_lines_moved(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    (tree / "a").write_text("zero\nzero\n" + (tree / "a").read_text())
    patch = tmp_path / "0001-change.patch"
    patch.write_text(PATCH)
    ps.apply_patch(tree, patch)
    assert (tree / "a").read_text().startswith("zero\nzero\none\nTWO\n")


def test_context_that_does_not_match_is_refused(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    (tree / "a").write_text((tree / "a").read_text().replace("three", "3"))
    patch = tmp_path / "0001-change.patch"
    patch.write_text(PATCH)
    with pytest.raises(ps.PatchError, match="does not apply"):
        ps.apply_patch(tree, patch)


def test_the_series_applies_to_the_pinned_release(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ps, "OUT", tmp_path / "target" / "patched" / "smoltcp")
    try:
        ps.fetch_crate()
    except ps.PatchError as e:  # neither in Cargo's cache nor downloadable: nothing to patch
        pytest.skip(f"the smoltcp release is not available here: {e}")
    ps.build()  # a patch that no longer applies fails here, never skips
    tree = ps.OUT
    assert (tree / ps.STAMP).read_text().strip() == ps.stamp()
    assert ps.up_to_date()
    tcp = (tree / "src" / "socket" / "tcp.rs").read_text()
    assert "pub fn set_min_rto" in tcp
    assert (tree / "src" / "socket" / "tcp" / "sack.rs").exists()


def test_cargo_toml_points_at_the_tree_the_script_makes() -> None:
    ps.check_manifest()
    lock = (ROOT / "Cargo.lock").read_text()
    entry = lock.split('name = "smoltcp"\n', 1)[1].split("\n\n", 1)[0]
    assert f'version = "{ps.VERSION}"' in entry
    assert "source =" not in entry, "Cargo.lock must record smoltcp as the patched path"


def test_check_reports_an_up_to_date_tree() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "patch_smoltcp.py")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    check = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "patch_smoltcp.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0
    assert "up to date" in check.stdout
