"""The README tells a new user what they need, and the commands it shows are real ones.

Every ``golem-vpn ...`` command in the README's shell blocks must parse with the CLI's own
parser (shell variables replaced by sample values); running them end to end needs root and
several daemons, which the provider-side and end-to-end tests do.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from golem_vpn.cli import _parser

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
SAMPLES = {
    "$NET": "0" * 32,
    "$PROVIDER": "0x" + "ab" * 20,
    "$PROVIDER_API": "http://127.0.0.1:7466",
    "$ID": "1a2b3c4d",
}


def shell_blocks(text: str) -> list[str]:
    """The ``sh`` fenced code blocks of a Markdown text."""
    return re.findall(r"```sh\n(.*?)```", text, flags=re.DOTALL)


def commands_in(text: str) -> list[str]:
    """Every ``golem-vpn ...`` invocation in the shell blocks of a Markdown text."""
    commands = []
    for block in shell_blocks(text):
        for line in block.splitlines():
            code = line.split(" #", 1)[0]
            # A command ends at a pipe, a redirection, a background '&' or a '$(...)' end.
            commands += [m.strip() for m in re.findall(r"golem-vpn [^|&>)]*", code)]
    return commands


def readme_commands() -> list[str]:
    return commands_in(README)


def check_parses(command: str, samples: dict[str, str] = SAMPLES) -> None:
    """Fails the test unless ``command`` parses with the CLI's own parser (shell variables
    replaced by ``samples``)."""
    argv = [samples.get(token, token) for token in shlex.split(command)[1:]]
    assert not [t for t in argv if t.startswith("$")], f"no sample value for {command!r}"
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"{command!r} does not parse (exit {exc.code})")
    assert args.command is not None


def test_the_readme_covers_what_a_new_user_asks() -> None:
    for needed in (
        "golem-vpn net create",
        "golem-vpn net connect",
        "golem-vpn net deploy",
        "YAGNA_NET_URL",
        "YAGNA_API_URL",
        "YAGNA_APPKEY",
        "examples/",
        "golem-vpn id show",
        "0.0.0.0:11500",
        "0.0.0.0:7464",
        "127.0.0.1:7465",
    ):
        assert needed in README, needed
    assert "DESIGN.md" not in README
    assert "](docs/architecture.md)" in README
    architecture = (ROOT / "docs" / "architecture.md").read_text()
    for layer in ("rust/router", "rust/tunnel", "rust/datapath", "smoltcp", "golem_vpn.netapi"):
        assert layer in architecture, layer
    for layer in ("golem_vpn.sdk", "golem_vpn.exeunit", "golem_vpn.node", "netcli"):
        assert layer in architecture, layer


def test_there_are_commands_to_check() -> None:
    commands = readme_commands()
    assert len(commands) >= 20
    assert any(c.startswith("golem-vpn net deploy") for c in commands)


@pytest.mark.parametrize("command", readme_commands())
def test_each_readme_command_parses(command: str) -> None:
    check_parses(command)
