"""Everything a hospital does, as plain functions: the menu, the subcommands and tests call these.

Each function takes the site's ``SiteProfile`` (and settings where it needs them), talks to the
request socket through ``SiteConnection`` and returns data; rendering is the caller's job.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from client.federation.socket_client import SiteConnection
from client.menu.evaluation import Evaluation, evaluate_model_file, evaluate_weights
from client.site_profile import SiteProfile, save_profile
from shared import protocol
from shared.dataset_layout import DatasetScan, scan_dataset
from shared.errors import ConfigError, NotFoundError
from shared.progress import report
from shared.settings import Settings

#: ``progress(round, epoch, loss, accuracy)``, called after every local epoch.
ProgressCallback = Callable[[int, int, float, float], None]

def setup_site(settings: Settings, **fields: Any) -> SiteProfile:
    """Create or replace the site's profile (server, token, data folder, budget, declarations).

    A budget delta above 1/(10 n) for the site's n training images is refused. Re-running it
    never raises what the server enforces: the server caps every session at the lower of this
    budget and the admin's enrolment budget, in its own ledger.
    """
    from client.training.privacy_contract import check_deltas

    site = fields["site"]
    try:
        profile = SiteProfile(state_dir=settings.site_dir(site), **fields)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"cannot set up site '{site}': {problems}", hint="Check the values and try again.") from None
    scan_dataset(profile.data_root)  # a wrong folder layout is refused now, not at training time
    check_deltas(profile)
    save_profile(settings, profile)
    return profile


def register_identity(profile: SiteProfile, connection: SiteConnection | None = None) -> protocol.IdentityKeyRegistered:
    """Make the site's identity key if it has none and register it with the server (idempotent).

    Peers in a secure-aggregation session accept only keys signed by the identity key the
    server registered for this site, so this runs at setup and again before every request.
    """
    from client.federation.site_identity import load_or_create_identity
    from shared.secagg_identity import encode_public_key

    public_key = encode_public_key(load_or_create_identity(profile.identity_key_path))
    if connection is not None:
        return connection.register_identity_key(public_key)
    with connect(profile) as own:
        return own.register_identity_key(public_key)


def connect(profile: SiteProfile, *, timeout: float = 30.0) -> SiteConnection:
    return SiteConnection(profile.server_host, profile.server_port, profile.site, profile.token, timeout=timeout,
                          tls_ca=profile.tls_ca, tls_cert=profile.tls_cert, tls_key=profile.tls_key)


def dataset_summary(profile: SiteProfile) -> DatasetScan:
    """Images per class and skipped files of the site's data folder."""
    return scan_dataset(profile.data_root)


def privacy_status(profile: SiteProfile) -> dict[str, Any]:
    """Spent (all recorded runs composed; PLD, RDP beside it), budget and remaining at the budget's delta,
    the privacy unit, and the patient-level (group privacy) figures when slices per patient are declared."""
    from shared.privacy_accounting import IMAGE_UNIT, PATIENT_UNIT

    ledger = _ledger(profile)
    spent = ledger.spent_both()
    k = profile.max_slices_per_patient
    patients = spent.for_patients(k)
    return {"spent": spent.epsilon, "spent_rdp": spent.epsilon_rdp, "budget": ledger.max_epsilon,
            "remaining": max(0.0, ledger.max_epsilon - spent.epsilon), "delta": ledger.delta, "unit": IMAGE_UNIT,
            **({"patient_unit": PATIENT_UNIT.format(k=k), "patient_epsilon": patients[0],
                "patient_delta": patients[1]} if patients else {})}


def planned_epsilon(profile: SiteProfile, *, rounds: int, local_epochs: int, dp: dict[str, Any]) -> float:
    """Refuse a request whose training would exceed the budget (or break delta <= 1/(10 n)); return the
    total it would leave. Planned like the server plans it, with ``PLANNING_BATCH_SIZE``; the server
    decides the real schedule at approval and every round is checked again before it trains.

    A request without noise passes here: only the admin can grant it (at enrolment), and the
    server refuses it otherwise.
    """
    from client.training.privacy_contract import planned_event
    from shared.privacy_accounting import epsilon_for

    event = planned_event(profile, rounds=rounds, local_epochs=local_epochs, dp=dp)
    if math.isinf(epsilon_for(event, profile.budget_delta)):
        return math.inf
    return _ledger(profile).check_run(event)


def dp_request(profile: SiteProfile, *, target_epsilon: float | None, noise: float | None,
               delta: float | None = None, clip: float = 1.0, engine: str | None = None) -> dict[str, Any]:
    """The ``dp`` part of a request: a target epsilon or a noise multiplier, at the budget's delta.

    ``engine`` defaults to the site profile's ``dp_engine``.
    """
    dp: dict[str, Any] = {"delta": delta or profile.budget_delta, "l2_norm_clip": clip,
                          "engine": engine or profile.dp_engine}
    if noise is not None:
        dp["noise_multiplier"] = noise
    else:
        dp["target_epsilon"] = target_epsilon or 1.0
    return dp


def request_training(
    profile: SiteProfile, *, rounds: int, local_epochs: int, dp: dict[str, Any], note: str = ""
) -> protocol.RequestView:
    """Check the privacy budget locally, then queue the request, with the site's declaration, with the server."""
    from client.training.privacy_contract import declaration

    planned_epsilon(profile, rounds=rounds, local_epochs=local_epochs, dp=dp)
    with connect(profile) as connection:
        register_identity(profile, connection)
        return connection.submit_request(rounds=rounds, local_epochs=local_epochs, dp=dp, note=note,
                                         declaration=declaration(profile))


def my_requests(profile: SiteProfile) -> list[protocol.RequestView]:
    with connect(profile) as connection:
        return connection.list_requests()


def train(profile: SiteProfile, request: str | int, *, approval_timeout_s: float = 3600.0,
          progress: ProgressCallback | None = None,
          on_approved: Callable[[protocol.SessionTicket], None] | None = None) -> protocol.SessionTicket:
    """Wait for approval of ``request`` and take part in its session until it ends."""
    from client.federation.session_runner import train_for_request

    with connect(profile) as connection:
        return train_for_request(connection, profile, request, approval_timeout_s=approval_timeout_s,
                                 progress=progress, on_approved=on_approved)


def notifications(profile: SiteProfile, *, unread_only: bool = False) -> list[protocol.NotificationView]:
    with connect(profile) as connection:
        return connection.notifications(unread_only=unread_only)


def new_notifications(profile: SiteProfile) -> list[protocol.NotificationView]:
    """Unread notifications, marked read now that they are shown (the menu's notices)."""
    with connect(profile) as connection:
        unread = connection.notifications(unread_only=True)
        if unread:
            connection.acknowledge([n.id for n in unread])
    return unread


def available_updates(profile: SiteProfile) -> list[protocol.VersionView]:
    """Versions this site may download: released to it, or trained with it."""
    with connect(profile) as connection:
        return connection.list_versions()


def accept_update(profile: SiteProfile, number: int) -> Path:
    """Download version ``number`` (sha256-verified), save it as a Keras .h5 model and log it."""
    from client.training.model_files import save_global_model

    with connect(profile) as connection:
        version = next((v for v in connection.list_versions() if v.number == number), None)
        if version is None:
            raise NotFoundError(f"version v{number} is not available to site '{profile.site}'",
                                hint="List the available updates first.")
        weights_path, sha256 = connection.download_version(number, profile.models_dir / f"v{number}.npz")
        h5_name = f"{profile.site}_FinalGlobal_v{number}.h5"
        report(f"saving {h5_name}", 0, 1, "step")
        h5_path = save_global_model(weights_path, sha256, version.model, profile.models_dir / h5_name,
                                    backbone_weights=profile.backbone_weights)
        report(f"saving {h5_name}", 1, 1, "step")
        connection.accept_update(number)
    _log_version(profile, {"version": number, "sha256": sha256, "h5": str(h5_path), "npz": str(weights_path),
                           "metrics": version.metrics, "model": version.model})
    return h5_path


def evaluate_version(profile: SiteProfile, number: int, data_root: Path | None = None) -> Evaluation:
    """Accuracy and confusion matrix of an accepted version on ``data_root`` (default: every local
    image); no network, nothing written."""
    entry = next((e for e in reversed(version_log(profile)) if e["version"] == number), None)
    if entry is None:
        raise NotFoundError(f"v{number} has not been accepted on site '{profile.site}'",
                            hint=f"Accept it first: fl-client --site {profile.site} accept v{number}")
    return evaluate_weights(number, Path(entry["npz"]), entry["sha256"], entry["model"], data_root or profile.data_root,
                            backbone_weights=profile.backbone_weights)


def evaluate_file(model_file: Path, data_root: Path) -> Evaluation:
    """A saved model file (``<site>_FinalGlobal_vN.h5``) on a folder of scans: needs no site."""
    return evaluate_model_file(model_file, data_root)


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
    from client.training.privacy_contract import site_ledger

    return site_ledger(profile)
