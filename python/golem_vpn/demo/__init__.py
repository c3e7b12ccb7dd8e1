"""``golem-vpn demo``: the whole idea working on one machine, in a minute.

- :mod:`.cluster`: the demo (``golem-vpn demo``, what ``make demo`` runs): a relay, a
  requestor's daemon and three providers' daemons as separate processes on loopback; a network
  made with the SDK, DEPLOYs through the attachment API, payloads talking over virtual IPs, the
  requestor reaching in through its gate, a node removed; a report (text or ``--json``).
- :mod:`.node` and :mod:`.payload`: the programs it runs in those processes.
- :mod:`.local`: the in-process walkthrough of the layers (``golem-vpn demo --local``).

Nothing here is imported by the library; the CLI loads it when the command runs.
"""
