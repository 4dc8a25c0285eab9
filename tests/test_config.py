"""gateway.toml loading: every error names the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gw.toml"
    path.write_text(text)
    return path


def test_shipped_config_loads() -> None:
    config = load_config(REPO / "gateway.toml")
    assert config.server.port == 8080
    assert config.storage.path == REPO / "gateway.db"
    assert config.api_keys[0].key == "demo-key"
    assert config.delivery.retry_schedule == [5, 300, 1800, 7200, 18000, 36000, 36000]


def test_defaults_when_empty(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ""))
    assert config.server.host == "127.0.0.1"
    assert config.delivery.allow_private_targets is False
    assert config.storage.path == tmp_path / "gateway.db"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '[[api_keys]]\nname = "a"\nkey = "key-00001"\n[[api_keys]]\nname = "b"\n',
            "api_keys[1].key: field required",
        ),
        ('[server]\nport = "eighty"\n', "server.port:"),
        ("[server]\nport = 70000\n", "server.port:"),
        ('[server]\ncolour = "red"\n', "server.colour: unknown key"),
        ("[delivery]\nretry_schedule = [5, -1]\n", "delivery.retry_schedule:"),
        ('[sources.channex]\napi_url = "x"\n', "sources.channex.token: field required"),
        ('[[api_keys]]\nname = "a"\nkey = "short"\n', "api_keys[0].key:"),
        ("[server\n", "invalid TOML"),
    ],
)
def test_errors_name_file_and_key(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert expected in message
    assert "\n" not in message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "absent.toml")


def test_env_substitution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESELLER_KEY", "from-the-environment")
    monkeypatch.setenv("DB_DIR", "/var/lib/gw")
    config = load_config(
        write(
            tmp_path,
            '[storage]\npath = "${DB_DIR}/x.db"\n[[api_keys]]\nname = "a"\nkey = "${RESELLER_KEY}"\n',
        )
    )
    assert config.api_keys[0].key == "from-the-environment"
    assert config.storage.path == Path("/var/lib/gw/x.db")


def test_missing_env_var_names_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    path = write(tmp_path, '[[api_keys]]\nname = "a"\nkey = "${NOT_SET_ANYWHERE}"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert (
        str(info.value)
        == f"{path}: api_keys[0].key: environment variable NOT_SET_ANYWHERE is not set"
    )


def test_relative_paths_resolve_against_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sub = tmp_path / "etc"
    sub.mkdir()
    path = sub / "gateway.toml"
    path.write_text('[storage]\npath = "data/gw.db"\n[templates]\ndir = "tpl"\n')
    monkeypatch.chdir(tmp_path)
    config = load_config(path)
    assert config.storage.path == sub / "data" / "gw.db"
    assert config.templates.dir == sub / "tpl"


def test_duplicate_api_keys_refused(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[[api_keys]]\nname = "a"\nkey = "same-key-1"\n[[api_keys]]\nname = "b"\nkey = "same-key-1"\n',
    )
    with pytest.raises(ConfigError, match="api_keys"):
        load_config(path)


def test_gateway_config_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "[server]\nport = 9191\n")
    monkeypatch.setenv("GATEWAY_CONFIG", str(path))
    assert load_config().server.port == 9191


def test_demo_config_is_the_shipped_one_with_private_targets() -> None:
    shipped = load_config(REPO / "gateway.toml")
    demo = load_config(REPO / "docs" / "demo.toml")
    assert demo.delivery.allow_private_targets is True
    assert shipped.delivery.allow_private_targets is False
    assert demo.plugins.dir == shipped.plugins.dir
    assert demo.templates.dir == shipped.templates.dir
    demo.delivery.allow_private_targets = False
    assert demo.model_dump(exclude={"storage"}) == shipped.model_dump(exclude={"storage"})


# -- [storage] url: PostgreSQL ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '[storage]\npath = "x.db"\nurl = "postgresql://gw@db/gateway"\n',
            "storage: give either path (SQLite) or url (PostgreSQL), not both",
        ),
        ('[storage]\nurl = "mysql://gw:hunter2@db/gateway"\n', "storage.url: must be a"),
    ],
)
def test_storage_errors_name_file_and_key(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert expected in message
    assert "hunter2" not in message


def test_storage_url_from_the_environment_and_described_without_its_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_DB", "postgresql://gw:s3cret@db.internal:5432/gateway")
    config = load_config(write(tmp_path, '[storage]\nurl = "${GATEWAY_DB}"\n'))
    assert config.storage.url == "postgresql://gw:s3cret@db.internal:5432/gateway"
    assert config.storage.is_postgres
    assert config.storage.describe() == "postgresql://gw:***@db.internal:5432/gateway"
    assert "s3cret" not in repr(config.storage.describe())


def test_storage_path_stays_the_default(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[storage]\npath = "here.db"\n'))
    assert config.storage.url is None
    assert not config.storage.is_postgres
    assert config.storage.describe() == str(tmp_path / "here.db")
