"""The node identity: the data dir setting, the key file, and ``golem-vpn id show|create``.

Everything happens under pytest's ``tmp_path``; ``HOME``, ``XDG_DATA_HOME`` and
``GOLEM_VPN_DATA_DIR`` are pointed there, so the user's real data dir is never touched.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from golem_vpn import GolemVpnError, Identity, IdentityError, config
from golem_vpn.node import identity

posix_only = pytest.mark.skipif(os.name == "nt", reason="POSIX file modes")


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.delenv(config.DATA_DIR_ENV, raising=False)
    return home


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def stored_secret(path: Path) -> bytes:
    return bytes.fromhex(path.read_text().splitlines()[1])


# --- config.data_dir: CLI flag > GOLEM_VPN_DATA_DIR > platform default -------------------


def test_data_dir_flag_beats_env_beats_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    assert config.data_dir(create=False) == home / ".local" / "share" / "golem-vpn"
    monkeypatch.setenv(config.DATA_DIR_ENV, str(tmp_path / "from-env"))
    assert config.data_dir(create=False) == tmp_path / "from-env"
    assert config.data_dir(tmp_path / "from-flag", create=False) == tmp_path / "from-flag"
    assert config.data_dir(str(tmp_path / "as-str"), create=False) == tmp_path / "as-str"


def test_data_dir_empty_env_counts_as_unset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(config.DATA_DIR_ENV, "")
    assert config.data_dir(create=False) == tmp_path / "home/.local/share/golem-vpn"


def test_data_dir_expands_user_and_is_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(config.DATA_DIR_ENV, "~/vpn")
    assert config.data_dir(create=False) == tmp_path / "home" / "vpn"
    monkeypatch.chdir(tmp_path)
    assert config.data_dir("rel", create=False) == tmp_path / "rel"


def test_data_dir_default_follows_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert config.data_dir(create=False) == tmp_path / "xdg" / "golem-vpn"
    # The XDG spec says to ignore a relative XDG_DATA_HOME.
    monkeypatch.setenv("XDG_DATA_HOME", "relative/xdg")
    assert config.data_dir(create=False) == tmp_path / "home/.local/share/golem-vpn"


def test_data_dir_default_on_macos_and_windows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    assert config.data_dir(create=False) == tmp_path / "home/Library/Application Support/golem-vpn"
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setenv("APPDATA", str(tmp_path / "Roaming"))
    assert config.data_dir(create=False) == tmp_path / "Roaming" / "golem-vpn"


@posix_only
def test_data_dir_is_created_with_mode_0700(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = os.umask(0o002)  # a lax umask must not loosen the dir
    try:
        made = config.data_dir()
    finally:
        os.umask(old)
    assert made == tmp_path / "home/.local/share/golem-vpn"
    assert made.is_dir()
    assert mode(made) == 0o700
    # An existing dir is left as it is; create=False creates nothing.
    made.chmod(0o750)
    assert config.data_dir() == made
    assert mode(made) == 0o750
    assert not config.data_dir(tmp_path / "absent", create=False).exists()


# --- the key file ----------------------------------------------------------------------


@posix_only
def test_create_writes_mode_0600_in_the_documented_format(tmp_path: Path) -> None:
    old = os.umask(0o000)  # even with no umask the key is 0600
    try:
        ident = identity.create(tmp_path / "data")
    finally:
        os.umask(old)
    path = tmp_path / "data" / "node.key"
    assert identity.key_path(tmp_path / "data") == path
    assert mode(path) == 0o600
    assert mode(tmp_path / "data") == 0o700
    text = path.read_text()
    assert text == f"golem-vpn-key v1\n{ident.secret_bytes().hex()}\n{ident.node_id}\n"
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["node.key"]  # no temp file left


def test_node_id_is_golem_style_and_round_trips(tmp_path: Path) -> None:
    ident = identity.create(tmp_path)
    assert ident.node_id.startswith("0x")
    assert len(ident.node_id) == 42
    assert int(ident.node_id, 16) >= 0
    loaded = identity.load(tmp_path)
    assert loaded.node_id == ident.node_id
    assert loaded.secret_bytes() == ident.secret_bytes()
    assert Identity.from_secret(stored_secret(tmp_path / "node.key")).node_id == ident.node_id


def test_load_or_create_creates_once_then_loads(tmp_path: Path) -> None:
    first, created = identity.load_or_create(tmp_path / "d")
    assert created
    second, created_again = identity.load_or_create(tmp_path / "d")
    assert not created_again
    assert second.node_id == first.node_id


def test_create_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = identity.create(data)
    before = (data / "node.key").read_bytes()
    with pytest.raises(IdentityError, match="already exists") as info:
        identity.create(data)
    assert isinstance(info.value.__cause__, FileExistsError)
    assert str(data / "node.key") in str(info.value)
    assert (data / "node.key").read_bytes() == before
    replaced = identity.create(data, force=True)
    assert replaced.node_id != first.node_id
    assert identity.load(data).node_id == replaced.node_id
    assert [p.name for p in data.iterdir()] == ["node.key"]


def test_load_missing_key(tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match="no node key at") as info:
        identity.load(tmp_path / "nowhere")
    assert isinstance(info.value.__cause__, FileNotFoundError)
    assert isinstance(info.value, GolemVpnError)


@posix_only
@pytest.mark.parametrize("bad_mode", [0o640, 0o604, 0o644, 0o660, 0o666, 0o610])
def test_load_refuses_a_key_others_may_read(tmp_path: Path, bad_mode: int) -> None:
    identity.create(tmp_path)
    path = tmp_path / "node.key"
    secret_hex = stored_secret(path).hex()
    path.chmod(bad_mode)
    with pytest.raises(IdentityError) as info:
        identity.load(tmp_path)
    message = str(info.value)
    assert f"{bad_mode:04o}" in message
    assert "too open" in message
    assert f"chmod 600 {path}" in message
    assert secret_hex not in message
    path.chmod(0o400)  # read-only for the owner is fine
    identity.load(tmp_path)


SECRET = "4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318"
NODE_ID = Identity.from_secret(bytes.fromhex(SECRET)).node_id
GOOD = f"golem-vpn-key v1\n{SECRET}\n{NODE_ID}\n"
OTHER_ID = Identity.generate().node_id


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        pytest.param(b"", "first line must be 'golem-vpn-key v1'", id="empty"),
        pytest.param(f"{SECRET}\n".encode(), "first line must be 'golem-vpn-key v1'", id="raw-hex"),
        pytest.param(
            GOOD.replace("v1", "v2").encode(), "first line must be 'golem-vpn-key v1'", id="tag"
        ),
        pytest.param(b"\xff\xfe" + GOOD.encode(), "not ASCII text", id="binary"),
        pytest.param(f"golem-vpn-key v1\n{SECRET}\n".encode(), "expected 3 lines", id="no-node-id"),
        pytest.param((GOOD + "extra\n").encode(), "expected 3 lines", id="extra-line"),
        pytest.param(
            GOOD.replace(SECRET, SECRET[:-2]).encode(), "must be 64 hex digits", id="short"
        ),
        pytest.param(
            GOOD.replace(SECRET, SECRET + "00").encode(), "must be 64 hex digits", id="long"
        ),
        pytest.param(GOOD.replace(SECRET, SECRET[:-1] + "g").encode(), "is not hex", id="bad-hex"),
        pytest.param(
            GOOD.replace(SECRET, "00" * 32).encode(), "not a valid secp256k1", id="zero-key"
        ),
        pytest.param(
            GOOD.replace(SECRET, "ff" * 32).encode(), "not a valid secp256k1", id="over-order"
        ),
        pytest.param(
            GOOD.replace(NODE_ID, OTHER_ID).encode(), "does not match the key", id="wrong-id"
        ),
        pytest.param(
            f"golem-vpn-key v1\n{SECRET}\n{SECRET}\n".encode(),
            "does not match the key",
            id="secret-as-id",
        ),
        pytest.param(b"golem-vpn-key v1\n" + b"0" * 5000, "too large", id="huge"),
    ],
)
def test_load_refuses_malformed_key_files(tmp_path: Path, content: bytes, problem: str) -> None:
    path = tmp_path / "node.key"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(IdentityError) as info:
        identity.load(tmp_path)
    message = str(info.value)
    assert problem in message
    assert str(path) in message
    for text in (message, repr(info.value)):
        assert SECRET not in text
        assert SECRET[:16] not in text
    assert info.value.__cause__ is None  # no chained error that could carry file contents


def test_load_tolerates_crlf_uppercase_hex_and_no_final_newline(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    path.write_bytes(f"golem-vpn-key v1\r\n{SECRET.upper()}\r\n0x{NODE_ID[2:].upper()}".encode())
    path.chmod(0o600)
    assert identity.load(tmp_path).node_id == NODE_ID
    # ... but the 0x prefix is part of the node id.
    path.write_bytes(f"golem-vpn-key v1\n{SECRET}\n{NODE_ID[2:]}\n".encode())
    with pytest.raises(IdentityError, match="does not match"):
        identity.load(tmp_path)


def test_concurrent_load_or_create_agrees_on_one_key(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda _: identity.load_or_create(data), range(32)))
    assert len({ident.node_id for ident, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    assert identity.load(data).node_id == results[0][0].node_id
    assert [p.name for p in data.iterdir()] == ["node.key"]


def test_identity_repr_hides_the_secret(tmp_path: Path) -> None:
    ident = identity.create(tmp_path)
    assert ident.secret_bytes().hex() not in repr(ident)
    assert ident.secret_bytes().hex() not in str(ident)


# --- the CLI ---------------------------------------------------------------------------


def golem_vpn(
    *args: str | Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != config.DATA_DIR_ENV}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "golem_vpn", *map(str, args)],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=60,
        check=False,
    )


def test_cli_show_without_a_key_exits_1_and_suggests_create(tmp_path: Path) -> None:
    data = tmp_path / "data"
    result = golem_vpn("id", "show", "--data-dir", data)
    assert result.returncode == 1
    assert result.stdout == ""
    assert "no node key at" in result.stderr
    assert str(data / "node.key") in result.stderr
    assert "golem-vpn id create --data-dir" in result.stderr
    assert not data.exists()  # show creates nothing


def test_cli_create_show_and_force(tmp_path: Path) -> None:
    data = tmp_path / "data"
    key = data / "node.key"
    created = golem_vpn("id", "create", "--data-dir", data)
    assert created.returncode == 0, created.stderr
    node_id = Identity.from_secret(stored_secret(key)).node_id
    assert created.stdout == f"created a new node key\nnode id:  {node_id}\nkey file: {key}\n"

    shown = golem_vpn("id", "show", "--data-dir", data)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == f"node id:  {node_id}\nkey file: {key}\n"

    again = golem_vpn("id", "create", "--data-dir", data)
    assert again.returncode == 1
    assert "already exists" in again.stderr
    assert "--force" in again.stderr
    assert Identity.from_secret(stored_secret(key)).node_id == node_id  # untouched

    forced = golem_vpn("id", "create", "--force", "--data-dir", data)
    assert forced.returncode == 0, forced.stderr
    new_id = Identity.from_secret(stored_secret(key)).node_id
    assert new_id != node_id
    assert forced.stdout.startswith("replaced the node key\n")
    assert f"node id:  {new_id}\n" in forced.stdout


def test_cli_json(tmp_path: Path) -> None:
    data = tmp_path / "data"
    created = golem_vpn("id", "create", "--data-dir", data, "--json")
    assert created.returncode == 0, created.stderr
    doc = json.loads(created.stdout)
    key = data / "node.key"
    assert doc == {
        "nodeId": Identity.from_secret(stored_secret(key)).node_id,
        "keyFile": str(key),
    }
    shown = golem_vpn("id", "show", "--json", "--data-dir", data)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == doc


def test_cli_uses_env_then_default_data_dir(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env_dir = tmp_path / "env-dir"
    base = {"HOME": str(home)}
    result = golem_vpn("id", "create", "--json", env={**base, config.DATA_DIR_ENV: str(env_dir)})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["keyFile"] == str(env_dir / "node.key")

    # The flag wins over the environment.
    flag_dir = tmp_path / "flag-dir"
    result = golem_vpn(
        "id", "create", "--json", "--data-dir", flag_dir, env={config.DATA_DIR_ENV: str(env_dir)}
    )
    assert json.loads(result.stdout)["keyFile"] == str(flag_dir / "node.key")

    if sys.platform.startswith("linux"):
        default_env = {**base, "XDG_DATA_HOME": str(tmp_path / "xdg")}
        result = golem_vpn("id", "create", "--json", env=default_env)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["keyFile"] == str(tmp_path / "xdg/golem-vpn/node.key")


@posix_only
def test_cli_refuses_an_insecure_key_without_leaking_it(tmp_path: Path) -> None:
    identity.create(tmp_path)
    key = tmp_path / "node.key"
    key.chmod(0o644)
    result = golem_vpn("id", "show", "--data-dir", tmp_path)
    assert result.returncode == 1
    assert f"chmod 600 {key}" in result.stderr
    assert stored_secret(key).hex() not in result.stderr + result.stdout


def test_cli_id_usage_errors_exit_2(tmp_path: Path) -> None:
    assert golem_vpn("id").returncode == 2
    assert golem_vpn("id", "show", "--force", "--data-dir", tmp_path).returncode == 2
    assert golem_vpn("id", "frobnicate").returncode == 2


def test_cli_version_still_works() -> None:
    result = golem_vpn("version")
    assert result.returncode == 0
    assert result.stdout.startswith("golem-vpn ")
