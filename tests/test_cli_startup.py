"""The ``golem-vpn`` command starts without the heavy imports it does not need.

Startup time itself is measured by ``benches/cli_startup.py`` (figures in benches/RESULTS.md),
not asserted here: a timed test would fail on a busy machine. What keeps the time down is
checked instead, in fresh interpreters: which modules a command loads.
"""

from __future__ import annotations

import json
import subprocess
import sys

#: Modules that take most of a slow start: aiohttp (~250 ms here), asyncio (~80 ms) and the
#: native extension.
HEAVY = ("aiohttp", "asyncio", "golem_vpn._golem_vpn")


def loaded_after(code: str) -> dict[str, bool]:
    """Runs ``code`` in a fresh interpreter; which of :data:`HEAVY` it loaded."""
    probe = (
        f"{code}\nimport json, sys\nprint(json.dumps({{m: m in sys.modules for m in {HEAVY!r}}}))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    loaded: dict[str, bool] = json.loads(proc.stdout.splitlines()[-1])
    return loaded


def test_importing_the_cli_and_building_its_parser_loads_nothing_heavy() -> None:
    loaded = loaded_after("import golem_vpn.cli\ngolem_vpn.cli._parser()")
    assert loaded == dict.fromkeys(HEAVY, False)


def test_help_loads_nothing_heavy() -> None:
    code = (
        "import contextlib, io\n"
        "from golem_vpn.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    main(['--help'])"
    )
    assert loaded_after(code) == dict.fromkeys(HEAVY, False)


def test_the_package_loads_its_native_parts_on_first_use() -> None:
    assert loaded_after("import golem_vpn") == dict.fromkeys(HEAVY, False)
    loaded = loaded_after("import golem_vpn\ngolem_vpn.Router")
    assert loaded["golem_vpn._golem_vpn"]
    assert not loaded["aiohttp"]


def test_the_net_api_client_does_not_load_aiohttp_for_rest_calls() -> None:
    assert not loaded_after("import golem_vpn.netapi.client")["aiohttp"]
    assert not loaded_after("import golem_vpn.sdk")["aiohttp"]
