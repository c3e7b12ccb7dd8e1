"""The node daemon: identity, peers, control messages, transport (issue 4)."""
