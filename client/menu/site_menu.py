"""The hospital menu (``fl-client --site NAME`` without a command).

Before every prompt it prints the server's new notifications (approvals, rejections with their
reason, new versions) or, when the server cannot be reached, why and what to do. Ctrl-C inside
an item returns to the menu; at the menu it exits.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from questionary import Choice
from rich.console import Console

from client.menu import actions as site_actions
from client.menu import views
from client.menu.commands import (
    accept,
    console,
    evaluate,
    parse_server,
    print_setup,
    send_request,
    show_dataset,
    show_log,
    show_privacy,
    train_request,
)
from client.site_profile import SiteProfile, load_profile, profile_path
from shared import prompts, training_defaults
from shared.errors import FLError
from shared.settings import Settings
from shared.terminal import print_error

APPROVAL_TIMEOUT_S = 24 * 3600.0
TRAINABLE_NOW = ("APPROVED", "RUNNING")

Item = Callable[[Console, SiteProfile], None]


def run_menu(settings: Settings, site: str, out: Console | None = None) -> int:
    """Set the site up if needed, then loop over the menu until Exit (or Ctrl-C at the menu)."""
    out = out or console
    if not profile_path(settings, site).is_file():
        out.print(f"site {site} is not set up on this machine yet.")
        try:
            print_setup(out, _setup(settings, site))
        except KeyboardInterrupt:
            out.print("setup cancelled")
            return 130
    profile = load_profile(settings, site)
    items = {key: item for key, _, item in MENU}
    choices = [Choice(title, value=key, shortcut_key=key) for key, title, _ in MENU]
    while True:
        _print_notices(out, profile)
        out.rule(f"site {profile.site} | server {profile.server_host}:{profile.server_port} | "
                 f"data {profile.data_root}", style="dim")
        try:
            key = prompts.choose("What next?", choices, shortcuts=True)
        except KeyboardInterrupt:
            key = "9"
        item = items[key]
        if item is None:
            out.print("bye")
            return 0
        try:
            item(out, profile)
        except KeyboardInterrupt:
            out.print("cancelled; back to the menu")
        except FLError as error:
            print_error(out, error)


def _setup(settings: Settings, site: str) -> SiteProfile:
    token = prompts.secret("Enrolment token (from the admin)")
    data = prompts.text("Data folder (glioma/ meningioma/ notumor/ pituitary/)", required=True)
    host, port = parse_server(prompts.text("Server (host:port)", f"{settings.request_host}:{settings.request_port}",
                                           required=True))
    budget = prompts.number("Privacy budget: max epsilon", 10.0, float, minimum=0.001)
    return site_actions.setup_site(settings, site=site, token=token, data_root=Path(data).expanduser(),
                                   server_host=host, server_port=port, budget_epsilon=budget)


def _print_notices(out: Console, profile: SiteProfile) -> None:
    try:
        for note in site_actions.new_notifications(profile):
            out.print(f"[bold cyan]notice:[/] {note.message}")
    except FLError as error:
        print_error(out, error)


def request(out: Console, profile: SiteProfile) -> None:
    show_privacy(out, profile)
    rounds = prompts.number("Rounds", training_defaults.ROUNDS, int, minimum=1)
    epochs = prompts.number("Local epochs per round", training_defaults.LOCAL_EPOCHS, int, minimum=1)
    how = prompts.choose("Privacy", [Choice("target epsilon for this request", value="epsilon"),
                                     Choice("noise multiplier", value="noise")])
    value = prompts.number("Target epsilon" if how == "epsilon" else "Noise multiplier",
                           1.0, float, minimum=0.0001)
    note = prompts.text("Note for the admin (optional)")
    dp = site_actions.dp_request(profile, target_epsilon=value if how == "epsilon" else None,
                                 noise=value if how == "noise" else None)
    send_request(out, profile, rounds=rounds, local_epochs=epochs, dp=dp, note=note)


def my_requests(out: Console, profile: SiteProfile) -> None:
    out.print(views.requests_table(site_actions.my_requests(profile)))


def train(out: Console, profile: SiteProfile) -> None:
    waiting = [r for r in site_actions.my_requests(profile) if r.state in (*TRAINABLE_NOW, "PENDING")]
    if not waiting:
        out.print("no approved or pending request; send one first")
        return
    label = prompts.choose("Train for which request?", [
        Choice(f"{r.label} {r.state}: " + ("train now" if r.state in TRAINABLE_NOW
                                           else "wait for approval, then start automatically"), value=r.label)
        for r in waiting])
    train_request(out, profile, label, APPROVAL_TIMEOUT_S)


def updates(out: Console, profile: SiteProfile) -> None:
    out.print(views.versions_table(site_actions.available_updates(profile)))


def accept_update(out: Console, profile: SiteProfile) -> None:
    available = site_actions.available_updates(profile)
    accepted = {e["version"] for e in site_actions.version_log(profile)}
    if not available:
        out.print("no update is available to this site yet")
        return
    number = prompts.choose("Accept which version?", [
        Choice(f"{v.label} {v.kind}" + (" (already accepted)" if v.number in accepted else ""), value=str(v.number))
        for v in reversed(available)])
    accept(out, profile, int(number))


def evaluate_version(out: Console, profile: SiteProfile) -> None:
    accepted = sorted({e["version"] for e in site_actions.version_log(profile)}, reverse=True)
    if not accepted:
        out.print("no accepted version yet; accept an update first")
        return
    number = prompts.choose("Evaluate which version?", [Choice(f"v{n}", value=str(n)) for n in accepted])
    folder = prompts.text("Folder of scans (class sub-folders)", str(profile.data_root), required=True)
    evaluate(out, profile, int(number), Path(folder).expanduser())


def log_and_privacy(out: Console, profile: SiteProfile) -> None:
    show_log(out, profile)
    show_privacy(out, profile)


MENU: list[tuple[str, str, Item | None]] = [
    ("1", "Send a training request", request),
    ("2", "My requests and their status", my_requests),
    ("3", "Train for a request (now, or when approved)", train),
    ("4", "Local dataset summary", show_dataset),
    ("5", "Available model updates", updates),
    ("6", "Accept an update", accept_update),
    ("7", "Evaluate a version on local data", evaluate_version),
    ("8", "Version log and privacy budget", log_and_privacy),
    ("9", "Exit", None),
]
