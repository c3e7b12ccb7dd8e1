"""Where golem-vpn's settings come from: CLI flag, then environment, then default.

Every setting, its environment variable and its default:

=================== ====================== ==============================================
setting             environment variable   default
=================== ====================== ==============================================
data dir            ``GOLEM_VPN_DATA_DIR`` the platform's user data dir + ``golem-vpn``:
(``--data-dir``)                           Linux ``$XDG_DATA_HOME/golem-vpn`` (or
                                           ``~/.local/share/golem-vpn``), macOS
                                           ``~/Library/Application Support/golem-vpn``,
                                           Windows ``%APPDATA%\\golem-vpn``
Net API URL         ``YAGNA_NET_URL`` (the ``http://127.0.0.1:7465`` (+ ``/net-api/v1``)
(``--url``; the     full base), else
clients)            ``YAGNA_API_URL`` (the
                    daemon's root)
app key             ``YAGNA_APPKEY``       none
(``--app-key``)
daemon's Net API    ``GOLEM_VPN_API_LISTEN`` ``127.0.0.1:7465`` (this machine only)
(``daemon --api``)
daemon's UDP        ``GOLEM_VPN_LISTEN``   ``0.0.0.0:11500`` (every interface: peers and
transport                                  relays must reach it)
(``daemon --listen``)
relays (``daemon    ``GOLEM_VPN_RELAY``    none (comma-separated ``HOST:PORT``, in order of
--relay``)                                 preference)
relay's socket      ``GOLEM_VPN_RELAY_LISTEN`` ``0.0.0.0:7464`` (every interface)
(``relay --listen``)
=================== ====================== ==============================================

Addresses are ``HOST:PORT`` (``[ADDRESS]:PORT`` for IPv6); ``HOST`` may be a host name,
resolved when the daemon or relay starts (IPv4 first), and a relay's name again whenever
that relay stops answering (:mod:`golem_vpn.hostport`).

The data dir holds the state that must survive a restart: the node key (``node.key``, see
:mod:`golem_vpn.node.identity`) and, later, the daemon's database. Golem's own settings keep
their names (``YAGNA_APPKEY``, ``YAGNA_API_URL``, ...); project settings are ``GOLEM_VPN_*``.
An empty environment variable counts as unset. New settings get a row in the table above.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from golem_vpn.errors import DataDirError

__all__ = [
    "API_URL_ENV",
    "APPKEY_ENV",
    "DATA_DIR_ENV",
    "DEFAULT_API_URL",
    "NET_API_PATH",
    "NET_URL_ENV",
    "data_dir",
]

DATA_DIR_ENV = "GOLEM_VPN_DATA_DIR"
#: yagna's settings for where its REST API is and which app key to use, read by golem-vpn's
#: clients as yapapi and golem-js read them (see :mod:`golem_vpn.netapi.client`).
API_URL_ENV = "YAGNA_API_URL"
NET_URL_ENV = "YAGNA_NET_URL"
APPKEY_ENV = "YAGNA_APPKEY"
DEFAULT_API_URL = "http://127.0.0.1:7465"
NET_API_PATH = "/net-api/v1"
_APP = "golem-vpn"


def data_dir(
    flag: str | Path | None = None, *, create: bool = True, must_exist: bool = False
) -> Path:
    """The data dir: ``flag`` if given, else ``$GOLEM_VPN_DATA_DIR``, else the platform default.

    ``~`` is expanded and the result made absolute (symlinks are kept).

    Args:
        flag: The ``--data-dir`` value, if the user gave one.
        create: Create the dir (and missing parents) if it does not exist. The dir itself is
            made with mode 0700, since it holds secret keys; an existing dir is left as it is.
        must_exist: Refuse a dir that does not exist (for commands that only read: a typo
            in ``--data-dir`` must not pass for an empty data dir, nor create one).

    Raises:
        DataDirError: The path is a file; or it is missing and cannot be created, or
            ``must_exist`` and it is missing. (Also an ``OSError``.)
    """
    if flag is not None and str(flag) != "":
        path = Path(flag)
    elif value := os.environ.get(DATA_DIR_ENV):
        path = Path(value)
    else:
        path = _platform_data_home() / _APP
    path = path.expanduser().absolute()
    where = f"--data-dir or ${DATA_DIR_ENV}"
    if path.exists() and not path.is_dir():
        raise DataDirError(
            f"the data dir {path} is a file, not a directory; point {where} at a directory"
        )
    if must_exist and not path.is_dir():
        raise DataDirError(
            f"there is no golem-vpn data dir at {path} (nothing was ever stored there); check "
            f"{where}, or make one with `golem-vpn app-key create NAME` or `golem-vpn daemon`"
        )
    if create and not path.is_dir():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise DataDirError(
                f"cannot create the data dir {path}: a part of its path is a file; point {where} "
                "at a directory"
            ) from None
        except OSError as exc:
            raise DataDirError(
                f"cannot create the data dir {path}: {exc.strerror or exc}"
            ) from None
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            pass  # created concurrently
        except OSError as exc:
            raise DataDirError(
                f"cannot create the data dir {path}: {exc.strerror or exc}"
            ) from None
        else:
            os.chmod(path, 0o700)  # exactly 0700, whatever the umask
    return path


def _platform_data_home() -> Path:
    """The user's data home: the dir apps keep their per-user data in."""
    if sys.platform == "win32":
        appdata = os.environ.get("APPDATA")
        return Path(appdata) if appdata else Path.home() / "AppData" / "Roaming"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support"
    xdg = os.environ.get("XDG_DATA_HOME")
    # The XDG spec says relative values are invalid and must be ignored.
    if xdg and Path(xdg).is_absolute():
        return Path(xdg)
    return Path.home() / ".local" / "share"
