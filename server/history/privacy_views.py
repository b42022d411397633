"""Rich renderings of the server's privacy ledger (admin console and ``fl-history``).

Every epsilon here is the server's own, computed from the schedules it approved and sent: PLD
accountant (shown, enforced), RDP beside it as a cross-check, Poisson sampling, add/remove one
image. Where a site declared at most k slices per patient, the patient-level figure is the
group-privacy conversion (k eps, k e^((k-1) eps) delta), stated as such.
"""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.markup import escape
from rich.table import Table

from server.store.records import ChargeInfo, SiteInfo
from shared.privacy_accounting import IMAGE_UNIT, group_privacy
from shared.terminal import narrow_table

ACCOUNTING_NOTE = (f"{IMAGE_UNIT}; PLD accountant (RDP as a cross-check); each session charged in full at "
                   "approval from the schedule the server sent")


def eps_text(value: float | None) -> str:
    """An epsilon; None means the run had no finite guarantee (no noise, granted by the admin)."""
    return "inf (no DP)" if value is None else f"{value:.3f}"


def patient_text(epsilon: float | None, delta: float, slices: int | None) -> str:
    """The patient-level (epsilon, delta) by group privacy over ``slices``; blank when none declared."""
    if not slices:
        return ""
    if epsilon is None:
        return "inf (no DP)"
    patient_eps, patient_delta = group_privacy(epsilon, delta, slices)
    bound = f"{patient_delta:.2g}" if patient_delta < 1 else ">= 1 (no guarantee)"
    return f"{patient_eps:.3f} (k={slices}, delta {bound})"


def ledger_table(charges: list[ChargeInfo], title: str = "Privacy ledger (server)") -> Table:
    """One row per charge: the session's epsilon and the site's composed total, PLD with RDP in
    brackets. The patient-level figure is in ``sites_spent_table`` beside it (the latest total)."""
    table = narrow_table(title, "site", "sess", "rnd", "sigma", "q", "steps", "eps (RDP)", "total (RDP)",
                         "delta", "budget",
                         right=("rnd", "sigma", "q", "steps", "eps (RDP)", "total (RDP)", "delta", "budget"))
    for c in charges:
        s = c.schedule
        table.add_row(c.site, str(c.session_id), str(c.rounds), f"{s['noise_multiplier']:.3f}",
                      f"{s['sampling_rate']:.4f}", str(s["steps"]), _with_rdp(c.epsilon, c.epsilon_rdp),
                      _with_rdp(c.total_epsilon, c.total_epsilon_rdp), f"{c.delta:g}", f"{c.budget_epsilon:g}")
    return table


def _with_rdp(pld: float | None, rdp: float | None) -> str:
    """The PLD epsilon (shown, enforced) with the RDP cross-check beside it."""
    return eps_text(pld) if pld is None else f"{eps_text(pld)} ({eps_text(rdp)})"


def sites_spent_table(charges: list[ChargeInfo], sites: list[SiteInfo]) -> Table:
    """Per site: sessions charged, the latest composed total against the effective budget."""
    patients = any(c.slices_per_patient for c in charges)
    table = narrow_table("Privacy spent per site (server ledger)", "site", "sessions", "eps total", "RDP total",
                         "delta", "budget", "left", *(["patient level"] if patients else []),
                         right=("sessions", "eps total", "RDP total"))
    names = sorted({s.name for s in sites} | {c.site for c in charges})
    for name in names:
        mine = [c for c in charges if c.site == name]
        if not mine:
            table.add_row(name, "0", "0.000", "0.000", "", "", "", *([""] if patients else []))
            continue
        last = mine[-1]
        left = "" if last.total_epsilon is None else f"{max(0.0, last.budget_epsilon - last.total_epsilon):.3f}"
        patient = [patient_text(last.total_epsilon, last.delta, last.slices_per_patient)] if patients else []
        table.add_row(name, str(len(mine)), eps_text(last.total_epsilon), eps_text(last.total_epsilon_rdp),
                      f"{last.delta:g}", f"{last.budget_epsilon:g}", left, *patient)
    return table


def ledger_view(charges: list[ChargeInfo], sites: list[SiteInfo]) -> Group:
    return Group(sites_spent_table(charges, sites), ledger_table(charges), ACCOUNTING_NOTE)


def version_privacy_table(dp_summary: dict[str, Any], title: str = "Privacy (server ledger, this session)") -> Table:
    """A version's ``dp_summary``: per contributing site, the session's schedule and epsilon."""
    table = narrow_table(title, "site", "eps session", "RDP", "delta", "sigma", "q", "steps", "rounds", "examples",
                         "patient level", "DP engine")
    for site, r in sorted(dp_summary.items()):
        table.add_row(site, eps_text(r.get("epsilon")), eps_text(r.get("epsilon_rdp")), f"{r.get('delta', 0):g}",
                      _num(r.get("noise_multiplier"), ".3f"), _num(r.get("sampling_rate"), ".4f"),
                      str(r.get("steps", "")), str(r.get("rounds", "")), str(r.get("examples", "")),
                      patient_text(r.get("epsilon"), float(r.get("delta", 0)), r.get("slices_per_patient")),
                      escape(str(r.get("dp_engine", ""))))
    return table


def _num(value: Any, fmt: str) -> str:
    return format(value, fmt) if isinstance(value, (int, float)) else ""
