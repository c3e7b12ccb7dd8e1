"""The docs in docs/ say what the code does: their commands parse, their code runs.

- Every ``golem-vpn ...`` command in a shell block parses with the CLI's own parser (the
  README's helper, :func:`test_readme.commands_in`), every Python block compiles and its
  imports resolve, every relative link and anchor leads somewhere, and the README links every
  page.
- The flows run as written: the requestor guide's CLI session and its curl session against
  a real daemon (processes on loopback); its gate snippets (TCP through the gate, ARP through
  the raw gate) against a Net API in this process; the runtime guide's Python ExeUnit
  (a node of its own with an echo server on its userspace stack) reached by a requestor
  daemon through the gate; its ``Router`` helpers on a DEPLOY; and, as root, the requestor
  guide's SDK program with a provider attached by ``golem-vpn attach --tun`` serving HTTP.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import golem_vpn
from conftest import udp4
from exeunit_helpers import Nodes, cli
from golem_vpn import Identity
from golem_vpn.model import Network as ModelNetwork
from golem_vpn.netapi import Client
from golem_vpn.netapi.appkeys import AppKeys
from golem_vpn.netapi.server import serve
from golem_vpn.netapi.store import Store
from golem_vpn.node.daemon import DaemonBackend
from golem_vpn.node.relay import RelayService
from golem_vpn.node.transport import UdpTransport
from golem_vpn.sdk import Network
from test_netapi_server import PROV_A, Api, serve_test
from test_readme import SAMPLES, check_parses, commands_in, shell_blocks

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted((ROOT / "docs").glob("*.md"))
TEXT = {path.name: path.read_text() for path in DOCS}
DOC_SAMPLES = {**SAMPLES, "$PROVIDER": "0x" + "2b" * 20}


def python_blocks(text: str) -> list[str]:
    """The ``python`` fenced code blocks of a Markdown text."""
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def block_defining(doc: str, name: str) -> str:
    """The one Python block of ``doc`` that defines ``name``."""
    (block,) = [
        b for b in python_blocks(TEXT[doc]) if re.search(rf"^(async )?def {name}\(", b, re.M)
    ]
    return block


def load(doc: str, name: str) -> dict[str, Any]:
    """The namespace of the block defining ``name``, executed."""
    namespace: dict[str, Any] = {"__name__": f"docs_{name}"}
    exec(compile(block_defining(doc, name), f"docs/{doc}:{name}", "exec"), namespace)
    return namespace


def sessions_run_as_written(doc: str) -> list[str]:
    """The shell blocks of ``doc`` that say they run as written."""
    return [b for b in shell_blocks(TEXT[doc]) if "runs as written" in b.splitlines()[0]]


# -- what every page must hold to --------------------------------------------------------


def test_the_docs_are_all_there_and_linked_from_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    names = set(TEXT)
    for needed in (
        "concepts.md",
        "requestor-guide.md",
        "runtime-guide.md",
        "net-api.md",
        "security.md",
        "operations.md",
        "architecture.md",
    ):
        assert needed in names, needed
    for name in names:
        assert f"](docs/{name})" in readme, f"README does not link docs/{name}"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


@pytest.mark.parametrize("doc", sorted(TEXT))
def test_relative_links_and_anchors_resolve(doc: str) -> None:
    for target in re.findall(r"\]\(([^)\s]+)\)", TEXT[doc]):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        file = (ROOT / "docs" / path).resolve() if path else ROOT / "docs" / doc
        assert file.exists(), f"{doc}: {target} leads nowhere"
        if anchor and file.suffix == ".md":
            headings = re.findall(r"^#+ (.*)$", file.read_text(), flags=re.M)
            assert anchor in {_slug(h) for h in headings}, f"{doc}: no #{anchor} in {path}"


DOC_COMMANDS = [(doc, command) for doc in sorted(TEXT) for command in commands_in(TEXT[doc])]


def test_the_docs_have_commands_to_check() -> None:
    assert len(DOC_COMMANDS) >= 40
    for doc in ("requestor-guide.md", "runtime-guide.md", "operations.md"):
        assert any(d == doc for d, _ in DOC_COMMANDS), doc


@pytest.mark.parametrize(("doc", "command"), DOC_COMMANDS)
def test_each_doc_command_parses(doc: str, command: str) -> None:
    check_parses(command, DOC_SAMPLES)


DOC_PYTHON = [(doc, i) for doc in sorted(TEXT) for i in range(len(python_blocks(TEXT[doc])))]


@pytest.mark.parametrize(("doc", "index"), DOC_PYTHON)
def test_each_python_block_compiles_and_its_imports_resolve(doc: str, index: int) -> None:
    block = python_blocks(TEXT[doc])[index]
    compile(block, f"docs/{doc}[{index}]", "exec")
    imports = "\n".join(
        line for line in block.splitlines() if re.match(r"(from \S+ )?import ", line)
    )
    exec(compile(imports, f"docs/{doc}[{index}] imports", "exec"), {})


# -- the flows, run ----------------------------------------------------------------------


def test_the_requestor_guides_cli_and_curl_sessions_run_as_written(tmp_path: Path) -> None:
    sessions = sessions_run_as_written("requestor-guide.md")
    assert len(sessions) == 2
    with Nodes(tmp_path) as nodes:
        daemon = nodes.start("requestor")
        for session in sessions:
            result = subprocess.run(
                ["bash", "-e", "-o", "pipefail", "-c", session],
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
                cwd=tmp_path,
                env=daemon.env(),
            )
            assert result.returncode == 0, (session, result.stdout, result.stderr)
            assert "10.20.0.2" in result.stdout or "10.30.0.2" in result.stdout, result.stdout
    deploy = json.loads((tmp_path / "deploy.json").read_text())
    assert deploy["net"][0]["nodeIp"] == "10.20.0.2"
    assert json.loads((tmp_path / "net-api.json").read_text())["openapi"].startswith("3.")


def test_the_gate_snippets_run(tmp_path: Path) -> None:
    fetch = load("requestor-guide.md", "fetch")["fetch"]
    resolve = load("requestor-guide.md", "resolve")["resolve"]

    async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.0 200 OK\r\n\r\nhello from the payload")
        await writer.drain()
        writer.close()

    async def test(api: Api) -> None:
        nid = await api.create("192.168.0.0/24")
        await api.call("POST", f"/net/{nid}/nodes", {"id": PROV_A, "ip": "192.168.0.2"})
        server = await api.backend.provider(nid, PROV_A).start_server(http, 80)
        page = await fetch(api.url, api.keys["a"], nid)
        assert page == b"HTTP/1.0 200 OK\r\n\r\nhello from the payload"
        async with Client(api.url, api.keys["a"]) as client:
            assert await resolve(client, nid) == bytes.fromhex("9013c0a80002")
        server.close()

    serve_test(tmp_path, test)


def test_the_router_snippet_routes_a_deploy() -> None:
    namespace = load("runtime-guide.md", "routers")
    requestor, me, peer = "0x" + "aa" * 20, "0x" + "bb" * 20, "0x" + "cc" * 20
    network = ModelNetwork.create("10.40.0.0/24", requestor_id=requestor)
    network.add_node(me)
    network.add_node(peer)
    (router,) = namespace["routers"](network.deploy_args(me), me)
    assert set(router.nodes()) == {me, requestor, peer}
    packet = udp4("10.40.0.2", "10.40.0.3", b"hi")
    assert namespace["route"](router, [packet]) == [(peer, packet)]
    (vm,) = namespace["routers"](network.deploy_args(me), me, ethernet=True)
    assert vm.medium == "ethernet"


def test_the_python_exeunit_snippet_serves_through_the_gate(tmp_path: Path) -> None:
    serve_payload = load("runtime-guide.md", "serve_payload")["serve_payload"]

    async def main() -> None:
        async with RelayService("127.0.0.1", 0) as relay:
            requestor = DaemonBackend(UdpTransport(Identity.generate(), relay=relay.local_addr))
            store = Store(tmp_path / "netapi.db")
            key = AppKeys(store).create("test", requestor.node_id)
            runner = await serve(requestor, store, "127.0.0.1", 0, connect_timeout=1.0)
            host, port = runner.addresses[0][:2]
            provider, stop = Identity.generate(), asyncio.Event()
            try:
                async with (
                    Client(f"http://{host}:{port}", key) as client,
                    Network.create(client, "10.50.0.0/24") as net,
                ):
                    node = await net.add_node(provider.node_id)
                    payload = asyncio.create_task(
                        serve_payload(provider, net.deploy_args(node), relay.local_addr, stop)
                    )
                    deadline = time.monotonic() + 30
                    while True:
                        try:
                            reader, writer = await net.connect(node, 7)
                            break
                        except (golem_vpn.ConnectTimeout, golem_vpn.ConnectionRefused):
                            assert time.monotonic() < deadline, "the payload never answered"
                            await asyncio.sleep(0.5)
                    writer.write(b"echo through the docs\n")
                    await writer.drain()
                    assert await reader.readline() == b"echo through the docs\n"
                    writer.close()
                    stop.set()
                    await payload
            finally:
                stop.set()
                await runner.cleanup()
                store.close()
                requestor.close()

    asyncio.run(main())


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("ip") is None,
    reason="needs root (a TUN payload in a namespace) and iproute2",
)
def test_the_sdk_program_reaches_a_tun_payload(tmp_path: Path) -> None:
    (program,) = [
        b for b in python_blocks(TEXT["requestor-guide.md"]) if b.startswith("# requestor.py")
    ]
    (tmp_path / "requestor.py").write_text(program)
    netns = f"gvdocs-{os.getpid()}"
    with Nodes(tmp_path) as nodes:
        requestor, provider = nodes.start("requestor"), nodes.start("provider")
        sdk = subprocess.Popen(
            [sys.executable, "requestor.py", provider.node_id],
            cwd=tmp_path,
            env=requestor.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        web = None
        attachment = None
        try:
            assert sdk.stdout is not None
            line = sdk.stdout.readline()
            assert "DEPLOY is in deploy.json" in line, (line, sdk.stderr and sdk.stderr.read())
            attached = cli(
                "attach", "--deploy", str(tmp_path / "deploy.json"), "--tun", "--netns", netns,
                "--json", env=provider.env(),
            )  # fmt: skip
            assert attached.returncode == 0, attached.stderr
            attachment = json.loads(attached.stdout)["id"]
            web = subprocess.Popen(
                ["ip", "netns", "exec", netns, sys.executable, "-m", "http.server", "80"],
                cwd=tmp_path,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            out, err = sdk.communicate(timeout=90)
            assert sdk.returncode == 0, err
            assert "200 OK" in out, out
        finally:
            if sdk.poll() is None:
                sdk.kill()
                sdk.communicate()
            if web is not None:
                web.terminate()
                web.wait(timeout=10)
            if attachment is not None:
                assert cli("detach", attachment, env=provider.env()).returncode == 0
            subprocess.run(["ip", "netns", "delete", netns], capture_output=True, check=False)
