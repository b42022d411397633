"""The ``fl-client --site NAME`` subcommands: arguments in, ``site_actions`` called, ``views`` printed.

The hospital menu (``site_menu``) calls the same ``show_*``/``send_request``/``train_request``
functions, so both print the same tables and messages.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from client.menu import actions as site_actions
from client.menu import views
from client.menu.token_input import read_token
from client.menu.training_display import TrainingDisplay
from client.site_profile import SiteProfile
from shared.errors import FLError, UsageError
from shared.progress import ProgressDisplay
from shared.protocol import DEFAULT_DP_ENGINE
from shared.settings import Settings
from shared.terminal import make_console, print_unwrapped

console = make_console()

Handler = Callable[[argparse.Namespace, SiteProfile], int]


def parse_server(text: str) -> tuple[str, int]:
    """``host:port`` (or ``:port``) -> ``(host, port)``."""
    host, _, port = text.strip().rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"the server must be host:port, e.g. 127.0.0.1:9090 (got {text!r})")
    return host or "127.0.0.1", int(port)


def setup(args: argparse.Namespace, settings: Settings) -> int:
    host, port = parse_server(args.server)
    token = read_token(args.token, args.token_file)
    with console.status("checking every image ..."):
        profile = site_actions.setup_site(
            settings, site=args.site, token=token, data_root=args.data, server_host=host, server_port=port,
            budget_epsilon=args.budget_epsilon, budget_delta=args.budget_delta,
            backbone_weights=args.backbone_weights, tls_ca=args.tls_ca, tls_cert=args.tls_cert,
            tls_key=args.tls_key, count_public=args.count_public,
            max_slices_per_patient=args.slices_per_patient, dp_engine=args.dp_engine,
            require_secure_aggregation=args.require_secure_aggregation)
    print_setup(console, profile)
    print_identity(console, profile)
    return 0


def print_identity(out: Console, profile: SiteProfile) -> None:
    """Register the site's identity key now if the server answers; it is retried with every request."""
    try:
        registered = site_actions.register_identity(profile)
    except FLError as exc:  # the profile is saved either way; the next request registers it
        out.print(f"identity key not registered yet ({exc}); it will be with the first request", markup=False)
        return
    out.print(f"identity key {registered.fingerprint} registered (compare it with your peers' out of band)",
              markup=False)


def print_setup(out: Console, profile: SiteProfile) -> None:
    print_unwrapped(out, f"site {profile.site} set up: data {profile.data_root}, server "
                         f"{profile.server_host}:{profile.server_port}, budget epsilon {profile.budget_epsilon:g}, "
                         f"DP engine {profile.dp_engine}")


def send_request(out: Console, profile: SiteProfile, *, rounds: int, local_epochs: int, dp: dict,
                 note: str) -> str:
    """Check the budget, send the request, say so; returns its label (``REQ-n``)."""
    with out.status("checking the images and the privacy budget ..."):
        view = site_actions.request_training(profile, rounds=rounds, local_epochs=local_epochs, dp=dp, note=note)
    out.print(f"sent {view.label} ({view.state}) with DP engine {dp.get('engine', DEFAULT_DP_ENGINE)}; "
              "the admin will approve or reject it")
    return view.label


def train_request(out: Console, profile: SiteProfile, request: str, timeout: float) -> int:
    """Wait for approval, then train with the live display; 0 once the session is over."""
    out.print(f"waiting for approval of {request} (Ctrl-C stops waiting) ...")
    with TrainingDisplay(out) as display:
        ticket = site_actions.train(profile, request, approval_timeout_s=timeout, progress=display.epoch_done,
                                    on_approved=display.approved)
    out.print(f"session {ticket.session_id} finished; see the available updates")
    return 0


def show_dataset(out: Console, profile: SiteProfile) -> None:
    with out.status("checking every image ..."):
        scan = site_actions.dataset_summary(profile)
    views.print_dataset(out, scan)


def show_privacy(out: Console, profile: SiteProfile) -> None:
    out.print(views.privacy_table(site_actions.privacy_status(profile)))


def show_log(out: Console, profile: SiteProfile) -> None:
    out.print(views.version_log_table(site_actions.version_log(profile)))
    print_unwrapped(out, f"model files in {profile.models_dir}")


def accept(out: Console, profile: SiteProfile, number: int) -> None:
    with ProgressDisplay(out):
        path = site_actions.accept_update(profile, number)
    print_unwrapped(out, f"saved {path} (sha256 verified)")


def evaluate(out: Console, profile: SiteProfile | None, model: int | Path, data: Path | None) -> None:
    """A version this site accepted (``model`` an int) or a saved model file, on ``data``
    (default: the site's own images)."""
    if data is None and profile is None:
        raise UsageError("evaluating a model file without --site needs the folder of scans: --data DIR",
                         hint="fl-client evaluate north_FinalGlobal_v3.h5 --data FOLDER "
                              "(FOLDER/glioma, FOLDER/meningioma, ...)")
    folder = data or profile.data_root  # type: ignore[union-attr]
    label = f"v{model}" if isinstance(model, int) else str(model)
    print_unwrapped(out, f"evaluating {label} on the images in {folder} ...")
    with ProgressDisplay(out):
        if isinstance(model, int):
            result = site_actions.evaluate_version(profile, model, folder)  # type: ignore[arg-type]
        else:
            result = site_actions.evaluate_file(model, folder)
    views.print_evaluation(out, result)


def _request(args: argparse.Namespace, profile: SiteProfile) -> int:
    dp = site_actions.dp_request(profile, target_epsilon=args.target_epsilon, noise=args.noise, delta=args.delta,
                                 clip=args.clip, engine=args.dp_engine)
    label = send_request(console, profile, rounds=args.rounds, local_epochs=args.local_epochs, dp=dp, note=args.note)
    return train_request(console, profile, label, args.timeout) if args.train else 0


def _requests(args: argparse.Namespace, profile: SiteProfile) -> int:
    console.print(views.requests_table(site_actions.my_requests(profile)))
    return 0


def _train(args: argparse.Namespace, profile: SiteProfile) -> int:
    return train_request(console, profile, args.request, args.timeout)


def _notifications(args: argparse.Namespace, profile: SiteProfile) -> int:
    console.print(views.notifications_table(site_actions.notifications(profile, unread_only=args.unread)))
    return 0


def _updates(args: argparse.Namespace, profile: SiteProfile) -> int:
    console.print(views.versions_table(site_actions.available_updates(profile)))
    return 0


def _accept(args: argparse.Namespace, profile: SiteProfile) -> int:
    accept(console, profile, args.version)
    return 0


def _evaluate(args: argparse.Namespace, profile: SiteProfile) -> int:
    evaluate(console, profile, args.model, args.data)
    return 0


def _dataset(args: argparse.Namespace, profile: SiteProfile) -> int:
    show_dataset(console, profile)
    return 0


def _privacy(args: argparse.Namespace, profile: SiteProfile) -> int:
    show_privacy(console, profile)
    return 0


def _log(args: argparse.Namespace, profile: SiteProfile) -> int:
    show_log(console, profile)
    return 0


COMMANDS: dict[str, Handler] = {
    "request": _request, "requests": _requests, "train": _train, "notifications": _notifications,
    "updates": _updates, "accept": _accept, "evaluate": _evaluate, "dataset": _dataset, "privacy": _privacy,
    "log": _log,
}
