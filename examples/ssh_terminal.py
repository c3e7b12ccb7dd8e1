"""ssh into a provider's payload: from the requestor through the gate, and from another provider.

Run as root (it builds a small lab of network namespaces on this machine and removes it
afterwards)::

    sudo python examples/ssh_terminal.py

Needs Debian's ``openssh-server`` (``sshd``) and ``openssh-client``. What it does:

1. three "machines" (namespaces on one switch, :class:`golem_vpn.lab.Lab`): a hub with a relay
   and the requestor's daemon, and two providers, each with its own daemon;
2. the requestor creates a network (192.168.80.0/24) with both providers, and each provider
   attaches a payload namespace with ``golem-vpn attach --tun --netns`` from its DEPLOY;
3. ``sshd`` (a throw-away host key, key-only login) runs in provider 1's payload;
4. the requestor forwards a local port to it with ``golem-vpn net connect`` and runs
   ``ssh -p PORT root@127.0.0.1``, through the WebSocket gate;
5. provider 2's payload runs ``ssh root@192.168.80.2`` straight over the VPN.

Each ssh runs ``hostname -I`` and ``ip -brief addr show gvpn0`` remotely; their output is
printed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from golem_vpn.lab import GOLEM_VPN, Lab, in_netns, run

REMOTE = "echo connected to $(hostname -I); ip -brief addr show gvpn0"


def ssh_args(key: Path, port: int, host: str) -> list[str]:
    return [
        "ssh", "-i", str(key), "-p", str(port), "-o", "StrictHostKeyChecking=no",
        "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR",
        "-o", "ConnectTimeout=10", f"root@{host}", REMOTE,
    ]  # fmt: skip


def ssh_until_up(netns: str, args: list[str], wait: float = 30) -> str:
    """Runs ssh until it gets through (sshd and the path take a moment to come up)."""
    deadline = time.monotonic() + wait
    while True:
        done = run(*in_netns(netns, *args), check=False, timeout=60)
        if done.returncode == 0:
            return done.stdout
        if time.monotonic() > deadline:
            raise SystemExit(f"ssh failed: {done.stderr.strip()}")
        time.sleep(0.5)


def main() -> int:
    if os.geteuid() != 0 or shutil.which("sshd") is None or shutil.which("ssh") is None:
        print("run as root, with openssh-server and openssh-client installed", file=sys.stderr)
        return 2
    with Lab("gvs", "198.18.80.0/24") as lab:
        hub = lab.host("hub")
        relay = lab.relay(hub)
        requestor = lab.daemon(hub, relay=relay, name="requestor")
        providers = [lab.daemon(lab.host(f"p{i}"), relay=relay) for i in (1, 2)]
        network, deploys = requestor.create_network("192.168.80.0/24", providers)
        payloads = ["gvs-pay1", "gvs-pay2"]
        for provider, deploy, netns in zip(providers, deploys, payloads, strict=True):
            provider.attach_tun(deploy, netns)
        target = deploys[0]["net"][0]["nodeIp"]
        print(f"network {network}: provider 1's payload is {target}")

        keys = lab.work / "keys"
        keys.mkdir()
        client_key = keys / "id_ed25519"
        run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(client_key))
        run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / "host_key"))
        (keys / "authorized_keys").write_text(client_key.with_suffix(".pub").read_text())
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
        lab.popen(
            in_netns(payloads[0], shutil.which("sshd") or "sshd", "-D", "-e",
                     "-h", str(keys / "host_key"),
                     "-o", f"AuthorizedKeysFile={keys / 'authorized_keys'}",
                     "-o", "StrictModes=no", "-o", "UsePAM=no", "-o", "PidFile=none",
                     "-o", "PasswordAuthentication=no"),
            "sshd.log",
        )  # fmt: skip

        print("\n$ golem-vpn net connect ... (requestor) && ssh -p PORT root@127.0.0.1")
        forward = lab.popen(
            in_netns(hub, *requestor.env(), *GOLEM_VPN, "net", "connect", network,
                     f"{target}:22", "0"),
            "connect.log",
        )  # fmt: skip
        assert forward.stdout is not None
        ready = forward.stdout.readline()
        port = int(ready.split()[1].rsplit(":", 1)[1])  # "forwarding 127.0.0.1:PORT -> ..."
        print(ssh_until_up(hub, ssh_args(client_key, port, "127.0.0.1")), end="")

        print(f"\n$ ssh root@{target} (from provider 2's payload, straight over the VPN)")
        print(ssh_until_up(payloads[1], ssh_args(client_key, 22, target)), end="")
        for provider in providers:
            for attachment in provider.cli("attachments").stdout.splitlines()[:2]:
                print(attachment)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except subprocess.CalledProcessError as exc:
        sys.exit(f"{exc}")
