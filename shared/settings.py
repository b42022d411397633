"""Settings for server and clients: defaults that work out of the box, a TOML file, env overrides.

Precedence (highest first): keyword arguments, ``FL_*`` environment variables, the TOML file
named by ``FL_CONFIG`` (or ``./fl.toml`` when it exists), then the defaults below. Every path
default lives under ``home`` (``./var``), so a fresh checkout needs no configuration at all.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from shared.errors import ConfigError

DEFAULT_CONFIG_FILE = Path("fl.toml")


class Settings(BaseSettings):
    """Every tunable the server, the sessions and the clients read."""

    model_config = SettingsConfigDict(env_prefix="FL_", extra="forbid", frozen=True)

    home: Path = Field(Path("var"), description="Folder for the DB, versions and site state.")
    database_url: str = Field("", description="SQLAlchemy URL; empty means SQLite in home.")
    versions_dir: Path = Field(Path(), description="Weight files; empty means home/versions.")
    sites_dir: Path = Field(Path(), description="Per-site client state; empty means home/sites.")

    request_host: str = "127.0.0.1"
    request_port: int = Field(9090, ge=0, le=65535)
    session_host: str = "127.0.0.1"
    session_port_start: int = Field(8080, ge=1, le=65535)
    session_port_count: int = Field(20, ge=1, le=1000)
    max_frame_bytes: int = Field(1 << 20, ge=1024, description="Cap on one socket frame.")
    download_chunk_bytes: int = Field(256 << 10, ge=1024)

    image_size: int = Field(224, ge=32, le=1024)
    log_level: str = "INFO"

    #: One TLS setting for both listeners (request socket and Flower sessions): a certificate
    #: and its key turn TLS on for both; the CA is what sites trust, and what mutual TLS checks
    #: site certificates against. See ``shared.tls.server_tls``.
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_auth: bool = Field(False, description="Mutual TLS: sites present a certificate for their name.")
    insecure: bool = Field(False, description="Allow a non-loopback bind without TLS (tokens in clear).")
    group_readable: bool = Field(False, description="DB and versions 0640/0750 for analysts; keys stay 0600.")
    key_file: Path = Field(Path(), description="Server key (audit HMAC, session secrets); empty: home/keys.")
    max_pending_requests: int = Field(20, ge=1, le=10_000, description="PENDING requests one site may queue.")

    @model_validator(mode="after")
    def _fill_paths(self) -> Settings:
        """Derive the DB URL and folders from ``home`` when they are not set explicitly."""
        if not self.database_url:
            object.__setattr__(self, "database_url", f"sqlite:///{self.home / 'fl.db'}")
        if self.versions_dir == Path():
            object.__setattr__(self, "versions_dir", self.home / "versions")
        if self.sites_dir == Path():
            object.__setattr__(self, "sites_dir", self.home / "sites")
        if self.key_file == Path():
            object.__setattr__(self, "key_file", self.home / "keys" / "server.key")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("TLS needs both FL_TLS_CERT and FL_TLS_KEY (or neither)")
        if self.tls_client_auth and (self.tls_ca is None or self.tls_cert is None):
            raise ValueError("mutual TLS (FL_TLS_CLIENT_AUTH) needs FL_TLS_CA, FL_TLS_CERT and FL_TLS_KEY")
        return self

    @property
    def session_ports(self) -> range:
        """The pool of ports from which each Flower session takes one."""
        return range(self.session_port_start, self.session_port_start + self.session_port_count)

    def site_dir(self, site: str) -> Path:
        """Where one site keeps its privacy ledger, downloads and version log."""
        return self.sites_dir / site

    def as_environment(self) -> dict[str, str]:
        """The ``FL_*`` variables that make a child process load exactly these settings."""
        return {
            f"FL_{name.upper()}": str(value)
            for name, value in self.model_dump().items()
            if value is not None
        }

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls, _config_file()))


def _config_file() -> Path | None:
    named = os.environ.get("FL_CONFIG")
    if named:
        path = Path(named)
        if not path.is_file():
            raise ConfigError(f"FL_CONFIG names {path}, which is not a file")
        return path
    return DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.is_file() else None


def load_settings(**overrides: Any) -> Settings:
    """Build the settings, turning validation failures into one readable ``ConfigError``."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"invalid settings: {problems}") from None
    except ValueError as exc:  # malformed TOML
        raise ConfigError(f"cannot read settings: {exc}") from None
