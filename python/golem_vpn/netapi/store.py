"""The Net API's persistent state: networks, nodes, requestor addresses and app keys in SQLite.

The Net API server keeps its model in memory and writes every change here *before* it
answers, so a restarted daemon serves the same networks: :meth:`Store.load` returns them and
the server re-creates each one (and tells its backend). App keys live here too, hashed (see
:mod:`golem_vpn.netapi.appkeys`); the CLI adds keys to the same file while a daemon runs.

One SQLite connection in WAL mode (readers never block the writer, and another process such
as ``golem-vpn app-key create`` can write while the daemon runs) with ``synchronous=FULL``:
a commit is on disk when the call returns. Foreign keys cascade, so removing a network
removes its nodes and addresses in one statement.

Every method is synchronous and short (one statement or transaction on a local file) and
serialised by a lock, so the store may be used from any thread. The server calls the
methods that write through :func:`asyncio.to_thread`, so an ``fsync`` never stalls the event
loop (and with it the WebSocket gate's data pumps); the CLI calls them directly.

The schema is versioned (``schema_version``); :data:`_MIGRATIONS` upgrades an older file
step by step when it is opened, and a file from a newer golem-vpn is refused.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from golem_vpn.errors import StoreError, StoreFull, StoreUnavailable

__all__ = [
    "DEFAULT_FILENAME",
    "SCHEMA_VERSION",
    "Store",
    "StoreError",
    "StoreFull",
    "StoreUnavailable",
    "StoredAppKey",
    "StoredNetwork",
]

#: The database's file name inside the daemon's data dir.
DEFAULT_FILENAME = "golem-vpn.db"

# Migration ``i`` takes a file from schema version ``i`` to ``i + 1`` (version 0: empty).
# Append new steps; never edit a released one.
_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE networks (
        id           TEXT PRIMARY KEY,
        ip           TEXT NOT NULL,  -- as createNetwork answered it: "a.b.c.d/prefix"
        mask         TEXT NOT NULL,
        gateway      TEXT NOT NULL,
        requestor_id TEXT NOT NULL,
        requestor_ip TEXT NOT NULL,
        owner        TEXT NOT NULL,  -- the identity of the app key that created it
        created      REAL NOT NULL
    );
    CREATE TABLE nodes (
        network_id TEXT NOT NULL REFERENCES networks (id) ON DELETE CASCADE,
        node_id    TEXT NOT NULL,
        ip         TEXT NOT NULL,
        PRIMARY KEY (network_id, node_id),
        UNIQUE (network_id, ip)
    );
    CREATE TABLE addresses (
        network_id TEXT NOT NULL REFERENCES networks (id) ON DELETE CASCADE,
        ip         TEXT NOT NULL,
        PRIMARY KEY (network_id, ip)
    );
    CREATE TABLE app_keys (
        name     TEXT PRIMARY KEY,
        identity TEXT NOT NULL,
        key_hash BLOB NOT NULL,  -- sha256(salt || key)
        salt     BLOB NOT NULL,
        created  REAL NOT NULL
    );
    """,
)
#: The schema version this code writes.
SCHEMA_VERSION = len(_MIGRATIONS)


def _write_error(exc: sqlite3.Error, path: str) -> StoreError:
    """The error for a failed write: a full or read-only data dir says so (the Net API answers
    507 and 503), anything else is a database error."""
    code = getattr(exc, "sqlite_errorcode", None)
    primary = None if code is None else code & 0xFF  # extended codes carry the primary's
    where = os.path.dirname(path) or "."
    if primary == sqlite3.SQLITE_FULL:
        return StoreFull(
            f"the data dir's disk is full ({where}): the change was not stored; "
            "free some space and try again"
        )
    if primary in (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CANTOPEN):
        return StoreUnavailable(
            f"the data dir cannot be written ({where}: {exc}): the change was not stored"
        )
    return StoreError(f"database error: {exc}")


@dataclass(frozen=True)
class StoredNetwork:
    """One network as stored, with its nodes and the requestor's extra addresses.

    Attributes:
        id: The network id.
        ip: ``"a.b.c.d/prefix"``, the ``ip`` createNetwork answered.
        mask: The dotted netmask.
        gateway: The gateway address.
        requestor_id: The requestor's node id (this daemon's).
        requestor_ip: The requestor's first address.
        owner: The identity (node id) of the app key that created the network.
        created: Creation time, seconds since the epoch.
        nodes: ``(node_id, ip)`` of every node but the requestor, in the order they were added.
        addresses: The requestor's extra addresses, in the order they were added.
    """

    id: str
    ip: str
    mask: str
    gateway: str
    requestor_id: str
    requestor_ip: str
    owner: str
    created: float = field(default_factory=time.time)
    nodes: tuple[tuple[str, str], ...] = ()
    addresses: tuple[str, ...] = ()


@dataclass(frozen=True)
class StoredAppKey:
    """One app key as stored: never the key itself, only its salted hash."""

    name: str
    identity: str
    key_hash: bytes
    salt: bytes
    created: float


class Store:
    """The Net API's SQLite database. See the module docs.

    Args:
        path: The database file; created (mode 0600) with its schema if missing. ``":memory:"``
            gives a throwaway database.

    Raises:
        StoreError: The file is not a database, or its schema is newer than this code's.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = str(path)
        self._lock = threading.RLock()
        if self._path != ":memory:" and not os.path.exists(self._path):
            # Create it private first: it holds (hashed) app keys. SQLite gives the -wal and
            # -shm files the same mode.
            os.close(os.open(self._path, os.O_CREAT | os.O_WRONLY, 0o600))
        try:
            self._db = sqlite3.connect(
                self._path, check_same_thread=False, isolation_level=None, timeout=5.0
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {self._path}: {exc}") from exc
        try:
            self._db.execute("PRAGMA foreign_keys = ON")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = FULL")
            self._migrate()
        except sqlite3.Error as exc:
            self._db.close()
            raise StoreError(f"cannot use {self._path}: {exc}") from exc
        except StoreError:
            self._db.close()
            raise

    @classmethod
    def in_data_dir(cls, data_dir: str | os.PathLike[str]) -> Store:
        """Open (or create) :data:`DEFAULT_FILENAME` in the daemon's data dir."""
        return cls(Path(data_dir) / DEFAULT_FILENAME)

    @property
    def path(self) -> str:
        """The database file."""
        return self._path

    def close(self) -> None:
        """Close the connection; the store cannot be used afterwards."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- schema ----------------------------------------------------------------------------

    def schema_version(self) -> int:
        """The file's schema version."""
        with self._lock:
            row = self._db.execute("SELECT version FROM schema_version").fetchone()
        return int(row[0])

    def _migrate(self) -> None:
        with self._transaction() as db:
            db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = db.execute("SELECT version FROM schema_version").fetchone()
            if row is None:
                db.execute("INSERT INTO schema_version (version) VALUES (0)")
                version = 0
            else:
                version = int(row[0])
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{self._path} has schema version {version}, newer than this golem-vpn's "
                    f"({SCHEMA_VERSION}); upgrade golem-vpn"
                )
            for step in range(version, SCHEMA_VERSION):
                for statement in _MIGRATIONS[step].split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute("UPDATE schema_version SET version = ?", (step + 1,))

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE``), committed unless an error escapes."""
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                # On a full disk it may be the COMMIT that fails (WAL frames are written
                # then). SQLite rolls back itself after such errors as a rule, but documents
                # that it "might" not: if a transaction is still open, end it, or every later
                # write would fail until a restart.
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                raise

    def _write(self, sql: str, args: tuple[object, ...]) -> int:
        try:
            with self._transaction() as db:
                return db.execute(sql, args).rowcount
        except sqlite3.IntegrityError as exc:
            raise StoreError(f"constraint failed: {exc}") from exc
        except sqlite3.Error as exc:
            raise _write_error(exc, self._path) from exc

    # -- networks --------------------------------------------------------------------------

    def add_network(self, network: StoredNetwork) -> None:
        """Store a new network with its nodes and addresses.

        Raises:
            StoreError: A network with this id is stored already.
        """
        try:
            with self._transaction() as db:
                db.execute(
                    "INSERT INTO networks (id, ip, mask, gateway, requestor_id, requestor_ip, "
                    "owner, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        network.id,
                        network.ip,
                        network.mask,
                        network.gateway,
                        network.requestor_id,
                        network.requestor_ip,
                        network.owner,
                        network.created,
                    ),
                )
                db.executemany(
                    "INSERT INTO nodes (network_id, node_id, ip) VALUES (?, ?, ?)",
                    [(network.id, node_id, ip) for node_id, ip in network.nodes],
                )
                db.executemany(
                    "INSERT INTO addresses (network_id, ip) VALUES (?, ?)",
                    [(network.id, ip) for ip in network.addresses],
                )
        except sqlite3.IntegrityError as exc:
            raise StoreError(f"cannot store network {network.id}: {exc}") from exc
        except sqlite3.Error as exc:
            raise _write_error(exc, self._path) from exc

    def remove_network(self, network_id: str) -> bool:
        """Remove a network and (by cascade) its nodes and addresses; False if not stored."""
        return self._write("DELETE FROM networks WHERE id = ?", (network_id,)) > 0

    def add_node(self, network_id: str, node_id: str, ip: str) -> None:
        """Store a node of a network (storing the same node and IP again is a no-op).

        Raises:
            StoreError: No such network, or the IP or node id is stored with another partner.
        """
        self._write(
            "INSERT INTO nodes (network_id, node_id, ip) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
            (network_id, node_id, ip),
        )
        # ON CONFLICT DO NOTHING also swallows a clash with a different partner: check.
        with self._lock:
            row = self._db.execute(
                "SELECT ip FROM nodes WHERE network_id = ? AND node_id = ?",
                (network_id, node_id),
            ).fetchone()
        if row is None or row[0] != ip:
            raise StoreError(f"node {node_id} or {ip} is stored differently in {network_id}")

    def set_node_ip(self, network_id: str, node_id: str, ip: str) -> None:
        """Move a stored node to another address (one statement: all or nothing).

        Raises:
            StoreError: The node is not stored, or the address is stored for another node.
        """
        try:
            changed = self._write(
                "UPDATE nodes SET ip = ? WHERE network_id = ? AND node_id = ?",
                (ip, network_id, node_id),
            )
        except StoreError:
            raise
        except sqlite3.IntegrityError as exc:
            raise StoreError(f"{ip} is stored for another node in {network_id}: {exc}") from None
        if changed == 0:
            raise StoreError(f"node {node_id} is not stored in {network_id}")

    def remove_node(self, network_id: str, node_id: str) -> bool:
        """Remove a node from a network; False if it was not stored."""
        return (
            self._write(
                "DELETE FROM nodes WHERE network_id = ? AND node_id = ?", (network_id, node_id)
            )
            > 0
        )

    def add_address(self, network_id: str, ip: str) -> None:
        """Store an extra requestor address (storing it again is a no-op).

        Raises:
            StoreError: No such network.
        """
        self._write(
            "INSERT INTO addresses (network_id, ip) VALUES (?, ?) ON CONFLICT DO NOTHING",
            (network_id, ip),
        )

    def remove_address(self, network_id: str, ip: str) -> bool:
        """Remove an extra requestor address; False if it was not stored."""
        return (
            self._write("DELETE FROM addresses WHERE network_id = ? AND ip = ?", (network_id, ip))
            > 0
        )

    def load(self) -> list[StoredNetwork]:
        """Every stored network with its nodes and addresses, oldest first."""
        with self._lock:
            db = self._db
            networks = db.execute(
                "SELECT id, ip, mask, gateway, requestor_id, requestor_ip, owner, created "
                "FROM networks ORDER BY created, rowid"
            ).fetchall()
            nodes: dict[str, list[tuple[str, str]]] = {}
            for network_id, node_id, ip in db.execute(
                "SELECT network_id, node_id, ip FROM nodes ORDER BY rowid"
            ):
                nodes.setdefault(network_id, []).append((node_id, ip))
            addresses: dict[str, list[str]] = {}
            for network_id, ip in db.execute("SELECT network_id, ip FROM addresses ORDER BY rowid"):
                addresses.setdefault(network_id, []).append(ip)
        return [
            StoredNetwork(
                id=row[0],
                ip=row[1],
                mask=row[2],
                gateway=row[3],
                requestor_id=row[4],
                requestor_ip=row[5],
                owner=row[6],
                created=float(row[7]),
                nodes=tuple(nodes.get(row[0], ())),
                addresses=tuple(addresses.get(row[0], ())),
            )
            for row in networks
        ]

    def counts(self, network_id: str) -> dict[str, int]:
        """How many rows each table holds for ``network_id`` (for tests and diagnostics)."""
        with self._lock:
            db = self._db
            return {
                table: int(
                    db.execute(
                        f"SELECT COUNT(*) FROM {table} WHERE {column} = ?", (network_id,)
                    ).fetchone()[0]
                )
                for table, column in (
                    ("networks", "id"),
                    ("nodes", "network_id"),
                    ("addresses", "network_id"),
                )
            }

    # -- app keys --------------------------------------------------------------------------

    def add_app_key(self, key: StoredAppKey) -> None:
        """Store an app key's hash.

        Raises:
            StoreError: A key with this name exists.
        """
        try:
            self._write(
                "INSERT INTO app_keys (name, identity, key_hash, salt, created) "
                "VALUES (?, ?, ?, ?, ?)",
                (key.name, key.identity, key.key_hash, key.salt, key.created),
            )
        except StoreUnavailable:
            raise
        except StoreError:
            raise StoreError(f"an app key named {key.name!r} exists already") from None

    def app_keys(self) -> list[StoredAppKey]:
        """Every app key, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT name, identity, key_hash, salt, created FROM app_keys "
                "ORDER BY created, rowid"
            ).fetchall()
        return [StoredAppKey(r[0], r[1], bytes(r[2]), bytes(r[3]), float(r[4])) for r in rows]

    def remove_app_key(self, name: str) -> bool:
        """Remove an app key by name; False if there is none."""
        return self._write("DELETE FROM app_keys WHERE name = ?", (name,)) > 0
