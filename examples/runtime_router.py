"""How an ExeUnit runtime uses the Router: DEPLOY config in, packets routed out.

A runtime receives the DEPLOY ``net`` argument, builds one Router per network from it, then
for every frame its payload sends calls ``inject`` and forwards each ``(node_id, packet)`` to
that node; every packet arriving from a node goes through ``receive`` before it reaches the
payload. Run: ``python examples/runtime_router.py``.
"""

from __future__ import annotations

from golem_vpn import Router
from golem_vpn.demo.local import udp_packet
from golem_vpn.model import Network, parse_deploy_net

REQUESTOR, ME, PEER = "0x" + "aa" * 20, "0x" + "bb" * 20, "0x" + "cc" * 20


def main() -> None:
    network = Network.create("10.20.0.0/24", requestor_id=REQUESTOR)
    network.add_node(ME)
    network.add_node(PEER)
    (net,) = parse_deploy_net(network.deploy_args(ME))  # what the ExeUnit receives

    router = Router(net.id, str(net.network), ME, [net.node_ip])
    for ip, node_id in net.nodes.items():
        if node_id != ME:
            router.add_node(node_id, ip)

    peer_ip = network.node(PEER).ip
    packet = udp_packet(str(net.node_ip), str(peer_ip), 5000, 6000, b"ping")
    for node_id, out in router.inject_many([packet]):
        print(f"send {len(out)} bytes to {node_id}")
    reply = udp_packet(str(peer_ip), str(net.node_ip), 6000, 5000, b"pong")
    print("payload gets", router.receive(reply, PEER))
    spoofed = router.receive(reply, REQUESTOR)  # a node sending with another node's IP
    dropped = {k: v for k, v in router.stats()["drops"].items() if v}
    print("spoofed reply:", spoofed, "->", dropped)


if __name__ == "__main__":
    main()
