"""A site's local profile: server address, enrolment token, data folder, privacy budget and declarations.

Kept as ``<sites_dir>/<site>/site.json`` (readable by the owner only, since it holds the
token), written once by ``fl-client --site NAME setup`` and read by every other command.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shared import secagg_protocol
from shared.errors import ConfigError
from shared.protocol import DEFAULT_DP_ENGINE, DpEngine
from shared.settings import Settings

PROFILE_NAME = "site.json"
#: Profiles written before the admin granted no-DP training at enrolment held this key; it grants nothing.
LEGACY_NO_DP_KEY = "allow_no_dp"


class SiteProfile(BaseModel):
    """Where a site keeps its images and state, and the privacy budget it holds itself to."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    site: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    state_dir: Path
    data_root: Path
    token: str = Field(min_length=1)
    server_host: str = "127.0.0.1"
    server_port: int = Field(9090, ge=1, le=65535)
    budget_epsilon: float = Field(10.0, gt=0)
    budget_delta: float = Field(1e-5, gt=0, lt=1)
    backbone_weights: Path | None = None
    #: The federation's CA certificate (ca.pem) when the server uses TLS; None means plain TCP.
    tls_ca: Path | None = None
    #: This site's own certificate and key, issued by the admin, when the server wants mutual TLS.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: Send the exact training-image count (declared public); otherwise it is rounded up to a bucket.
    count_public: bool = False
    #: The most MRI slices one patient contributes (k); views then also show the patient-level epsilon.
    max_slices_per_patient: int | None = Field(None, ge=1, le=10_000)
    #: The DP engine this site's requests ask for unless a request names another.
    dp_engine: DpEngine = DEFAULT_DP_ENGINE
    #: Refuse every session (and every round) without secure aggregation, whatever the server says.
    require_secure_aggregation: bool = False
    #: The per-coordinate clip range and quantisation levels this site accepts from the server
    #: for secure aggregation (low, high); anything outside is refused before training.
    secagg_clip_range: tuple[float, float] = secagg_protocol.ACCEPTED_CLIP_RANGE
    secagg_levels: tuple[int, int] = secagg_protocol.ACCEPTED_LEVELS

    @model_validator(mode="after")
    def _secagg_ranges(self) -> SiteProfile:
        clip_low, clip_high = self.secagg_clip_range
        levels_low, levels_high = self.secagg_levels
        if not 0 < clip_low <= clip_high or not 2 <= levels_low <= levels_high <= secagg_protocol.ACCEPTED_LEVELS[1]:
            raise ValueError(f"secure aggregation ranges need 0 < clip low <= high and 2 <= levels low <= high <= "
                             f"{secagg_protocol.ACCEPTED_LEVELS[1]}")
        return self

    @property
    def ledger_path(self) -> Path:
        return self.state_dir / "privacy_ledger.sqlite"

    @property
    def identity_key_path(self) -> Path:
        """The site's Ed25519 identity key (secure aggregation), owner-only beside the profile."""
        return self.state_dir / "identity_ed25519.pem"

    @property
    def peer_keys_path(self) -> Path:
        """Identity keys of peer sites seen so far (trust on first use)."""
        return self.state_dir / "secagg_peer_keys.json"

    @property
    def cache_dir(self) -> Path:
        return self.state_dir / "feature_cache"

    @property
    def models_dir(self) -> Path:
        return self.state_dir / "models"

    @property
    def version_log(self) -> Path:
        return self.state_dir / "version_log.jsonl"


def profile_path(settings: Settings, site: str) -> Path:
    return settings.site_dir(site) / PROFILE_NAME


def save_profile(settings: Settings, profile: SiteProfile) -> Path:
    """Write the profile atomically with owner-only permissions (it holds the site token)."""
    path = profile_path(settings, profile.site)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(profile.model_dump_json(indent=2))
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    return path


def load_profile(settings: Settings, site: str) -> SiteProfile:
    path = profile_path(settings, site)
    if not path.is_file():
        raise ConfigError(
            f"site '{site}' is not set up on this machine ({path} is missing)",
            hint=f"Run: fl-client --site {site} setup --token-file FILE --data FOLDER "
            "(or leave out --token-file to be asked for the token)",
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict):
            data.pop(LEGACY_NO_DP_KEY, None)  # training without DP is the admin's grant now, not a profile edit
        return SiteProfile.model_validate(data)
    except (ValueError, ValidationError) as exc:
        raise ConfigError(f"{path} is not a valid site profile: {exc}") from None
