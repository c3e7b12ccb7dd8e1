"""App keys: the bearer tokens a requestor app presents to the Net API, each bound to an identity.

As in yagna, every key belongs to a node identity, and a key sees only the networks its
identity created (see :mod:`golem_vpn.netapi.server`). A key is created once
(``golem-vpn app-key create NAME``), shown to the user that one time, and stored only as
``sha256(salt || key)`` with a random per-key salt; nothing here logs or returns a key after
:meth:`AppKeys.create`.

Keys are 32 random bytes (256 bits, URL-safe base64, 43 characters), so a fast hash is
enough: there is nothing to brute-force, and a slow KDF would only tax every request.
:meth:`AppKeys.verify` compares hashes with :func:`hmac.compare_digest` against every stored
key (there are few), without stopping at the first match.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass

from golem_vpn.errors import AppKeyError
from golem_vpn.model import parse_node_id
from golem_vpn.netapi.store import Store, StoredAppKey, StoreError

__all__ = ["AppKeyError", "AppKeyInfo", "AppKeys"]

#: Random bytes in a key.
KEY_BYTES = 32
_SALT_BYTES = 16
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@:+-]{0,63}")


@dataclass(frozen=True)
class AppKeyInfo:
    """What may be shown about an app key: never the key.

    Attributes:
        name: The key's name.
        identity: The node id the key acts as.
        created: Creation time, seconds since the epoch.
    """

    name: str
    identity: str
    created: float


def _hash(salt: bytes, key: str) -> bytes:
    return hashlib.sha256(salt + key.encode("utf-8", "surrogatepass")).digest()


class AppKeys:
    """The app keys in a :class:`~golem_vpn.netapi.store.Store`.

    Every call reads or writes the store, so keys created by another process (the CLI next to
    a running daemon) are seen at once.
    """

    def __init__(self, store: Store) -> None:
        self._store = store

    def create(self, name: str, identity: str) -> str:
        """Create a key named ``name`` acting as ``identity``; return it (shown only now).

        Raises:
            AppKeyError: ``name`` is malformed (1-64 characters of letters, digits and
                ``._@:+-``, starting with a letter or digit) or taken.
            InvalidNodeId: ``identity`` is not a node id.
        """
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            raise AppKeyError(
                f"{name!r} is not a valid app key name (1-64 characters of letters, digits "
                "and '._@:+-', starting with a letter or digit)"
            )
        identity = parse_node_id(identity)
        key = secrets.token_hex(KEY_BYTES)  # hex: never starts with "-" on a command line
        salt = secrets.token_bytes(_SALT_BYTES)
        try:
            self._store.add_app_key(
                StoredAppKey(name, identity, _hash(salt, key), salt, time.time())
            )
        except StoreError as exc:
            raise AppKeyError(str(exc)) from None
        return key

    def verify(self, key: str) -> str | None:
        """Return the identity ``key`` acts as, or None if it is no app key."""
        if not key:
            return None
        found: str | None = None
        for stored in self._store.app_keys():
            if hmac.compare_digest(_hash(stored.salt, key), stored.key_hash) and found is None:
                found = stored.identity
        return found

    def list(self) -> list[AppKeyInfo]:
        """Every key's name, identity and creation time, oldest first."""
        return [AppKeyInfo(k.name, k.identity, k.created) for k in self._store.app_keys()]

    def delete(self, name: str) -> None:
        """Remove the key named ``name``; requests using it fail from now on.

        Raises:
            AppKeyError: No key has that name.
        """
        if not self._store.remove_app_key(name):
            raise AppKeyError(f"no app key named {name!r}")
