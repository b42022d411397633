"""Settings: defaults, TOML file, environment overrides, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.errors import ConfigError
from shared.settings import load_settings


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("FL_CONFIG", "FL_REQUEST_PORT", "FL_HOME", "FL_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


def test_defaults_live_under_home() -> None:
    settings = load_settings(home=Path("state"))
    assert settings.database_url == "sqlite:///state/fl.db"
    assert settings.versions_dir == Path("state/versions")
    assert settings.request_port == 9090
    assert list(settings.session_ports)[:2] == [8080, 8081]


def test_toml_file_then_environment_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "server.toml"
    config.write_text('request_port = 9191\nsession_port_start = 9300\nhome = "srv"\n')
    monkeypatch.setenv("FL_CONFIG", str(config))
    assert load_settings().request_port == 9191
    monkeypatch.setenv("FL_REQUEST_PORT", "9292")
    settings = load_settings()
    assert (settings.request_port, settings.session_port_start) == (9292, 9300)
    assert settings.versions_dir == Path("srv/versions")


def test_fl_toml_in_the_working_folder_is_read(tmp_path: Path) -> None:
    (tmp_path / "fl.toml").write_text("image_size = 64\n")
    assert load_settings().image_size == 64


def test_environment_round_trip_reproduces_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    original = load_settings(home=Path("elsewhere"), request_port=9555)
    for name, value in original.as_environment().items():
        monkeypatch.setenv(name, value)
    assert load_settings() == original


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("FL_REQUEST_PORT", "not-a-port", "request_port"),
        ("FL_REQUEST_PORT", "70000", "request_port"),
        ("FL_CONFIG", "/nonexistent/fl.toml", "not a file"),
    ],
)
def test_bad_values_become_one_clear_config_error(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=message):
        load_settings()


def test_malformed_toml_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "fl.toml").write_text("request_port = = 1\n")
    with pytest.raises(ConfigError, match="cannot read settings"):
        load_settings()


def test_unknown_keys_are_refused(tmp_path: Path) -> None:
    (tmp_path / "fl.toml").write_text("request_prot = 1\n")
    with pytest.raises(ConfigError, match="request_prot"):
        load_settings()
