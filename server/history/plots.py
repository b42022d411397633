"""PNG plots of the history: metrics per round across versions, epsilon per site, privacy vs utility.

Figures are built with ``matplotlib.figure.Figure`` (no pyplot): no global state, no GUI backend,
so this works headless and in threads. Each builder returns the figure, so tests can read its
axes, and ``write_plots`` saves them and returns the file names.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from server.history.queries import (
    RoundRow,
    SiteContribution,
    all_rounds,
    site_contributions,
)
from server.store import Store

CHANCE = 0.25  # four balanced classes
ROUNDS_PNG = "metrics_per_round.png"
EPSILON_PNG = "epsilon_per_site.png"
STUDY_PNG = "privacy_utility.png"


def rounds_figure(rows: list[RoundRow]) -> Figure:
    """Validation accuracy and loss per round, one line per version."""
    fig = Figure(figsize=(10, 4), layout="constrained")
    acc, loss = fig.subplots(1, 2)
    evaluated = [r for r in rows if r.phase == "evaluate"]
    for version in sorted({r.version for r in evaluated}):
        mine = sorted((r for r in evaluated if r.version == version), key=lambda r: r.round_number)
        label = f"v{version} (session {mine[0].session_id})"
        acc.plot([r.round_number for r in mine], [r.accuracy for r in mine], marker="o", label=label)
        loss.plot([r.round_number for r in mine], [r.loss for r in mine], marker="o", label=label)
    acc.axhline(CHANCE, color="grey", linestyle=":", label="chance (4 classes)")
    acc.set(xlabel="round", ylabel="validation accuracy", title="Accuracy per round", ylim=(0, 1))
    loss.set(xlabel="round", ylabel="validation loss", title="Loss per round")
    for axes in (acc, loss):
        axes.xaxis.get_major_locator().set_params(integer=True)
        axes.legend(fontsize="small")
    return fig


def epsilon_figure(contributions: list[SiteContribution]) -> Figure:
    """Each site's composed epsilon (server ledger, PLD) after every session it was charged for, over time."""
    fig = Figure(figsize=(8, 4), layout="constrained")
    axes = fig.subplots()
    for c in contributions:
        finite = [p for p in c.points if p.epsilon_total is not None and p.epsilon is not None]
        if finite:
            axes.plot([p.recorded_at for p in finite], [p.epsilon_total for p in finite], marker="o",
                      label=c.site + (" (also trained without DP)" if c.without_dp else ""))
    axes.set(xlabel="time of approval", ylabel="epsilon spent (composed total, PLD)",
             title="Privacy spent per site over time")
    if axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize="small")
    fig.autofmt_xdate()
    return fig


def load_study(path: Path) -> dict[str, Any]:
    """The JSON that ``bench/privacy_utility.py`` writes."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


#: Each no-DP baseline its own colour and dash, so "no DP" and "centralised" can be told apart.
_BASELINE_STYLES = [("tab:green", "--"), ("tab:purple", "-.")]


def privacy_utility_figure(study: dict[str, Any]) -> Figure:
    """Final accuracy (the study scores held-out images) against the target epsilon (log axis); no DP dashed."""
    fig = Figure(figsize=(7, 4), layout="constrained")
    axes = fig.subplots()
    private = sorted((r for r in study["rows"] if r["epsilon"] is not None), key=lambda r: r["epsilon"])
    axes.plot([r["epsilon"] for r in private], [r["accuracy"] for r in private], marker="o",
              label="DP-SGD at target epsilon")
    baselines = [r for r in study["rows"] if r["epsilon"] is None]  # no DP, then the centralised ceiling
    for row, (colour, style) in zip(baselines, _BASELINE_STYLES * len(baselines)):
        axes.axhline(row["accuracy"], color=colour, linestyle=style, label=row["label"])
    axes.axhline(study.get("chance", CHANCE), color="grey", linestyle=":", label="chance")
    if private:  # a study of the no-DP baseline alone has nothing to put on a log axis
        axes.set_xscale("log")
    axes.set(xlabel="target epsilon per site (log scale)", ylabel="final accuracy (held-out)",
             title="Privacy-utility trade-off", ylim=(0, 1))
    axes.legend(fontsize="small")
    return fig


def save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def write_plots(store: Store, out_dir: Path, *, study: Path | None = None) -> list[Path]:
    """Write every plot the history supports into ``out_dir``; returns the files written."""
    written = [save(rounds_figure(all_rounds(store)), out_dir / ROUNDS_PNG),
               save(epsilon_figure(site_contributions(store)), out_dir / EPSILON_PNG)]
    if study is not None:
        written.append(save(privacy_utility_figure(load_study(study)), out_dir / STUDY_PNG))
    return written
