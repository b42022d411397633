"""Everything a hospital does, as plain functions: the menu, the subcommands and tests call these.

Each function takes the site's ``SiteProfile`` (and settings where it needs them), talks to the
request socket through ``SiteConnection`` and returns data; rendering is the caller's job.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from client.site_profile import SiteProfile, save_profile
from client.socket_client import SiteConnection
from shared import protocol
from shared.dataset_layout import DatasetScan, scan_dataset
from shared.errors import PrivacyBudgetExceeded
from shared.settings import Settings

#: Batch size assumed when a request's privacy cost is estimated before the admin decides.
PLANNING_BATCH_SIZE = 16
VALIDATION_FRACTION = 0.2


def setup_site(settings: Settings, **fields: Any) -> SiteProfile:
    """Create or replace the site's profile (server, token, data folder, budget)."""
    site = fields["site"]
    profile = SiteProfile(state_dir=settings.site_dir(site), **fields)
    scan_dataset(profile.data_root)  # a wrong folder layout is refused now, not at training time
    save_profile(settings, profile)
    return profile


def connect(profile: SiteProfile, *, timeout: float = 30.0) -> SiteConnection:
    return SiteConnection(profile.server_host, profile.server_port, profile.site, profile.token, timeout=timeout)


def dataset_summary(profile: SiteProfile) -> DatasetScan:
    """Images per class and skipped files of the site's data folder."""
    return scan_dataset(profile.data_root)


def privacy_status(profile: SiteProfile) -> dict[str, float]:
    """Spent (composed over every recorded run), budget and remaining epsilon at the budget's delta."""
    ledger = _ledger(profile)
    spent = ledger.spent()
    return {"spent": spent, "budget": ledger.max_epsilon, "remaining": max(0.0, ledger.max_epsilon - spent),
            "delta": ledger.delta}


def planned_epsilon(profile: SiteProfile, *, rounds: int, local_epochs: int, dp: dict[str, Any]) -> float:
    """Refuse a request whose training would exceed the budget; return the total it would leave.

    The estimate uses the local training-set size and ``PLANNING_BATCH_SIZE``; every round is
    checked again against the ledger before it trains, with the session's real batch size.
    """
    from client.privacy_accounting import dp_sgd_event, noise_for_target_epsilon

    n_train = max(1, math.floor(dataset_summary(profile).total * (1 - VALIDATION_FRACTION)))
    epochs = rounds * local_epochs
    delta = float(dp.get("delta", profile.budget_delta))
    noise = dp.get("noise_multiplier")
    if noise is None:
        noise = noise_for_target_epsilon(float(dp["target_epsilon"]), delta, n_train, PLANNING_BATCH_SIZE, epochs)
    if float(noise) <= 0:
        raise PrivacyBudgetExceeded("training without noise has no finite epsilon and would exceed any budget")
    return _ledger(profile).check_run(dp_sgd_event(float(noise), n_train, PLANNING_BATCH_SIZE, epochs))


def request_training(
    profile: SiteProfile, *, rounds: int, local_epochs: int, dp: dict[str, Any], note: str = ""
) -> protocol.RequestView:
    """Check the privacy budget locally, then queue the request with the server."""
    planned_epsilon(profile, rounds=rounds, local_epochs=local_epochs, dp=dp)
    with connect(profile) as connection:
        return connection.submit_request(rounds=rounds, local_epochs=local_epochs, dp=dp, note=note)


def my_requests(profile: SiteProfile) -> list[protocol.RequestView]:
    with connect(profile) as connection:
        return connection.list_requests()


def train(profile: SiteProfile, request: str | int, *, approval_timeout_s: float = 3600.0,
          progress: Any = None) -> protocol.SessionTicket:
    """Wait for approval of ``request`` and take part in its session until it ends."""
    from client.session_runner import train_for_request

    with connect(profile) as connection:
        return train_for_request(connection, profile, request, approval_timeout_s=approval_timeout_s,
                                 progress=progress)


def notifications(profile: SiteProfile, *, unread_only: bool = False) -> list[protocol.NotificationView]:
    with connect(profile) as connection:
        return connection.notifications(unread_only=unread_only)


def available_updates(profile: SiteProfile) -> list[protocol.VersionView]:
    """Versions this site may download: released to it, or trained with it."""
    with connect(profile) as connection:
        return connection.list_versions()


def accept_update(profile: SiteProfile, number: int) -> Path:
    """Download version ``number`` (sha256-verified), save it as a Keras .h5 model and log it."""
    from client.model_files import save_global_model

    with connect(profile) as connection:
        version = next((v for v in connection.list_versions() if v.number == number), None)
        if version is None:
            from shared.errors import NotFoundError

            raise NotFoundError(f"version v{number} is not available to site '{profile.site}'",
                                hint="List the available updates first.")
        weights_path, sha256 = connection.download_version(number, profile.models_dir / f"v{number}.npz")
        h5_path = save_global_model(
            weights_path, sha256, version.model, profile.models_dir / f"{profile.site}_FinalGlobal_v{number}.h5",
            backbone_weights=profile.backbone_weights,
        )
        connection.accept_update(number)
    _log_version(profile, {"version": number, "sha256": sha256, "h5": str(h5_path), "npz": str(weights_path),
                           "metrics": version.metrics})
    return h5_path


def version_log(profile: SiteProfile) -> list[dict[str, Any]]:
    if not profile.version_log.exists():
        return []
    return [json.loads(line) for line in profile.version_log.read_text(encoding="utf-8").splitlines() if line]


def _log_version(profile: SiteProfile, entry: dict[str, Any]) -> None:
    profile.version_log.parent.mkdir(parents=True, exist_ok=True)
    stamped = {"accepted_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), **entry}
    with profile.version_log.open("a", encoding="utf-8") as log:
        log.write(json.dumps(stamped) + "\n")


def _ledger(profile: SiteProfile) -> Any:
    from client.privacy_ledger import PrivacyLedger

    return PrivacyLedger(profile.ledger_path, max_epsilon=profile.budget_epsilon, delta=profile.budget_delta)
