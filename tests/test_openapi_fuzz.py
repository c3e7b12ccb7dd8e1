"""schemathesis against a real daemon: the server answers as its OpenAPI documents say.

A relay and a ``golem-vpn daemon`` run as processes on loopback (:mod:`exeunit_helpers`), with
an app key; schemathesis (its CLI, in a subprocess) loads each document from the URL the
daemon serves it at and sends a bounded number of generated requests per operation, in all
its phases (examples, coverage, fuzzing, and stateful sequences: create a network, add nodes,
remove them...). Every check runs: no 5xx, every status, content type, header and body as
documented, schema-violating requests refused, auth enforced, except:

- ``positive_data_acceptance``: a request the schema allows may still be refused with 400,
  because what makes an address good depends on the network (inside its range, not its
  network or broadcast address, held by a node): a JSON schema cannot say that.
- ``POST /golem-vpn/v1/attachments`` is left out: the test runs as root, and a request that
  happened to be a valid DEPLOY would make namespaces and devices on this machine.

Needs schemathesis (``pip install schemathesis``); skipped without it. The seed is fixed, so
a failure reproduces (schemathesis prints the request and a ``curl`` line).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from exeunit_helpers import Nodes
from golem_vpn.netapi.openapi import DOCUMENT_PATHS, Api

pytest.importorskip("schemathesis")

#: Generated requests per operation and phase: enough to find a mismatch between the document
#: and the server, small enough for a shared 2-core machine (~30 s for all three documents).
MAX_EXAMPLES = 10
SEED = 1


def schemathesis_run(
    url: str, key: str, cwd: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    """One ``schemathesis run`` (its state dir, ``.schemathesis``, goes into ``cwd``)."""
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from schemathesis.cli import schemathesis; sys.exit(schemathesis())",
            "run",
            url,
            "--header",
            f"Authorization: Bearer {key}",
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
            "--max-examples",
            str(MAX_EXAMPLES),
            "--seed",
            str(SEED),
            "--workers",
            "1",
            "--no-color",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=cwd,
    )


@pytest.mark.timeout(600)
def test_the_daemon_answers_as_its_documents_say(tmp_path: Path) -> None:
    extra: dict[Api, tuple[str, ...]] = {
        "net-api-v1": (),
        "net-api-v2": (),
        "attachments": ("--exclude-method", "POST"),
    }
    with Nodes(tmp_path) as nodes:
        daemon = nodes.start("daemon")
        for api, path in DOCUMENT_PATHS.items():
            result = schemathesis_run(daemon.api + path, daemon.key, tmp_path, *extra[api])
            report = result.stdout[-6000:] + result.stderr[-2000:]
            assert result.returncode == 0, f"{api}:\n{report}"
            assert " passed" in result.stdout, report
            assert "failed" not in result.stdout.split("SUMMARY")[-1], report
