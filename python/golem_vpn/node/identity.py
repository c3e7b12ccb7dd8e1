"""The node's identity: its secp256k1 key, kept in the data dir's ``node.key``.

A node id is ``0x`` + the last 20 bytes of keccak256 of the public key, as in Golem (see
:class:`golem_vpn.Identity`, which does the cryptography in Rust). This module only stores
and loads the key; the daemon and ``golem-vpn id show|create`` use it.

The key file is three lines of ASCII text, each ending in ``\\n``::

    golem-vpn-key v1
    <the 32-byte secret key as 64 lowercase hex digits>
    <the node id, 0x + 40 hex digits, for humans; checked against the key on load>

It is written atomically (a temp file in the same dir, created with mode 0600, fsynced, then
moved into place), so the key is never readable by others, even briefly, and a crash leaves
either the old file or the new one. Like ssh, :func:`load` refuses a key file that group or
others may read, and names the fix. No exception message, log line or repr carries the
secret.
"""

from __future__ import annotations

import errno
import os
import secrets
import shlex
import stat
from contextlib import suppress
from pathlib import Path

from golem_vpn._golem_vpn import Identity
from golem_vpn.errors import IdentityError

__all__ = ["FORMAT_TAG", "KEY_FILE", "create", "key_path", "load", "load_or_create"]

KEY_FILE = "node.key"
"""The key file's name in the data dir."""
FORMAT_TAG = "golem-vpn-key v1"
"""The key file's first line."""

_MAX_SIZE = 4096  # a key file is ~125 bytes; anything much bigger is not one
_CHECK_MODE = os.name != "nt"  # Windows has no POSIX mode bits (its ACLs are not checked)


def key_path(data_dir: str | Path) -> Path:
    """The key file's path in ``data_dir``."""
    return Path(data_dir) / KEY_FILE


def load(data_dir: str | Path) -> Identity:
    """Loads the node key from ``data_dir``.

    Raises:
        IdentityError: There is no key file (its ``__cause__`` is then a
            :class:`FileNotFoundError`), it cannot be read, group or others may read it, or
            it is malformed (wrong format tag, bad hex, wrong length, an invalid key, or a
            node id line that does not match the key). The message names the file and the
            problem, never the secret.
    """
    path = key_path(data_dir)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    except FileNotFoundError as exc:
        raise IdentityError(f"no node key at {path}") from exc
    except OSError as exc:
        raise IdentityError(f"cannot read the node key {path}: {exc.strerror}") from exc
    try:
        st = os.fstat(fd)  # of the file we read, not of whatever the path names later
        if not stat.S_ISREG(st.st_mode):
            raise IdentityError(f"{path}: not a regular file")
        if _CHECK_MODE and st.st_mode & 0o077:
            raise IdentityError(
                f"{path}: permissions {stat.S_IMODE(st.st_mode):04o} are too open: "
                f"the node key must not be readable by group or others; "
                f"fix it with: chmod 600 {shlex.quote(str(path))}"
            )
        data = os.read(fd, _MAX_SIZE + 1)
    except OSError as exc:
        raise IdentityError(f"cannot read the node key {path}: {exc.strerror}") from exc
    finally:
        os.close(fd)
    return _parse(path, data)


def create(data_dir: str | Path, *, force: bool = False) -> Identity:
    """Generates a new node key and stores it in ``data_dir`` (made with mode 0700 if missing).

    Args:
        force: Replace an existing key. The old key, and with it the old node id, is lost.

    Raises:
        IdentityError: A key already exists and ``force`` is false (its ``__cause__`` is
            then a :class:`FileExistsError`), or the key file cannot be written.
    """
    identity = Identity.generate()
    path = key_path(data_dir)
    if not _store(path, identity, replace=force):
        raise IdentityError(f"a node key already exists at {path}") from FileExistsError(
            errno.EEXIST, os.strerror(errno.EEXIST), str(path)
        )
    return identity


def load_or_create(data_dir: str | Path) -> tuple[Identity, bool]:
    """Loads the node key from ``data_dir``, creating one first if there is none.

    Safe against a concurrent creator: a key is never overwritten, and whoever loses the
    race loads the winner's key.

    Returns:
        The identity, and whether it was created by this call.

    Raises:
        IdentityError: As for :func:`load` and :func:`create`.
    """
    path = key_path(data_dir)
    if not os.path.lexists(path):
        identity = Identity.generate()
        if _store(path, identity, replace=False):
            return identity, True
    return load(data_dir), False


def _parse(path: Path, data: bytes) -> Identity:
    """The identity in a key file's contents; errors name ``path`` but never the secret."""
    if len(data) > _MAX_SIZE:
        raise IdentityError(f"{path}: too large to be a golem-vpn key file")
    try:
        lines = data.decode("ascii").splitlines()
    except UnicodeDecodeError:
        raise IdentityError(f"{path}: not a golem-vpn key file (not ASCII text)") from None
    lines = [line.strip() for line in lines]
    if not lines or lines[0] != FORMAT_TAG:
        raise IdentityError(
            f"{path}: not a golem-vpn key file (the first line must be {FORMAT_TAG!r})"
        )
    if len(lines) != 3:
        raise IdentityError(
            f"{path}: malformed key file: expected 3 lines "
            f"(format tag, secret key, node id), found {len(lines)}"
        )
    _, secret_hex, node_id_line = lines
    # The secret's text never goes into a message: only its length and the kind of problem.
    if len(secret_hex) != 64:
        raise IdentityError(
            f"{path}: malformed key file: the secret key (line 2) must be 64 hex digits, "
            f"found {len(secret_hex)} characters"
        )
    try:
        secret = bytes.fromhex(secret_hex)
    except ValueError:
        raise IdentityError(
            f"{path}: malformed key file: the secret key (line 2) is not hex"
        ) from None
    try:
        identity = Identity.from_secret(secret)
    except IdentityError:
        raise IdentityError(
            f"{path}: malformed key file: line 2 is not a valid secp256k1 secret key"
        ) from None
    if node_id_line.lower() != identity.node_id:
        raise IdentityError(
            f"{path}: malformed key file: the node id on line 3 does not match the key "
            f"(whose node id is {identity.node_id})"
        )
    return identity


def _store(path: Path, identity: Identity, *, replace: bool) -> bool:
    """Writes ``identity`` to ``path`` atomically; False if it exists and not ``replace``."""
    content = f"{FORMAT_TAG}\n{identity.secret_bytes().hex()}\n{identity.node_id}\n".encode()
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # O_EXCL: never write through a file (or symlink) someone else put there. Mode 0600
        # from the start, so the secret is never readable by others.
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
        fd = os.open(tmp, flags, 0o600)
        try:
            if hasattr(os, "fchmod"):
                os.fchmod(fd, 0o600)  # exactly 0600, whatever the umask
            view = memoryview(content)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.replace(tmp, path)
        elif not _link_new(tmp, path):
            return False
        _fsync_dir(path.parent)
    except OSError as exc:
        raise IdentityError(f"cannot write the node key {path}: {exc.strerror}") from exc
    finally:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
    return True


def _link_new(tmp: Path, path: Path) -> bool:
    """Moves ``tmp`` to ``path`` unless ``path`` exists; False if it does.

    A hard link fails atomically if the target exists, so two concurrent creators cannot
    both win. On filesystems without hard links, fall back to check-then-rename.
    """
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    except OSError:
        if os.path.lexists(path):
            return False
        os.replace(tmp, path)
    return True


def _fsync_dir(path: Path) -> None:
    """Makes a rename in ``path`` durable (POSIX; Windows cannot open a dir for fsync)."""
    if os.name == "nt":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
