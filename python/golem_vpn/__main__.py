"""``python -m golem_vpn``: the ``golem-vpn`` command."""

import sys

from golem_vpn.cli import main

sys.exit(main())
