"""Plotly figures of the dashboard, built from the same models the pages and the API return.

The figure travels as JSON inside the page (``<script type="application/json">``, HTML-escaped)
and ``static/dashboard.js`` hands it to the plotly.js that the installed plotly package ships,
so charts work offline and nothing is fetched from a CDN.
"""

from __future__ import annotations

from collections import defaultdict
from importlib.resources import files
from pathlib import Path

import plotly.graph_objects as go
from jinja2.utils import htmlsafe_json_dumps
from markupsafe import Markup
from plotly.io.json import to_json_plotly
from plotly.subplots import make_subplots

from server.history.web.schemas import (
    LineageOut,
    PrivacyPoint,
    RoundOut,
    VersionSummary,
)

#: plotly.js as the plotly package ships it (the same version its figures are made for)
PLOTLY_JS = Path(str(files("plotly") / "package_data" / "plotly.min.js"))

# A plain look set here rather than a plotly template: a template would ship ~10 kB of styles per chart.
_LAYOUT = {"template": "none", "plot_bgcolor": "#ffffff", "paper_bgcolor": "#ffffff", "height": 340,
           "margin": {"l": 50, "r": 20, "t": 40, "b": 40}, "hovermode": "closest",
           "legend": {"orientation": "h", "y": -0.2}, "font": {"family": "system-ui, sans-serif", "size": 12}}
_KIND_COLOURS = {"initial": "#888888", "session": "#1f77b4", "merge": "#d62728", "rollback": "#9467bd"}


def figure_json(figure: go.Figure) -> Markup:
    """The figure as JSON that is safe inside a ``<script>`` element (``<``, ``>``, ``&`` escaped)."""
    return htmlsafe_json_dumps(figure.to_plotly_json(), dumps=to_json_plotly)


def rounds_chart(rounds: list[RoundOut]) -> go.Figure:
    """Loss and accuracy per round, fit (training, aggregated) beside evaluate (validation)."""
    figure = make_subplots(rows=1, cols=2, subplot_titles=("loss", "accuracy"))
    for phase, dash, colour in (("fit", "dot", "#1f77b4"), ("evaluate", "solid", "#2ca02c")):
        rows = [r for r in rounds if r.phase == phase]
        x = [r.round_number for r in rows]
        for col, values in ((1, [r.loss for r in rows]), (2, [r.accuracy for r in rows])):
            figure.add_trace(go.Scatter(x=x, y=values, mode="lines+markers", name=phase, legendgroup=phase,
                                        showlegend=col == 1, line={"dash": dash, "color": colour}),
                             row=1, col=col)
    figure.update_xaxes(title_text="round", dtick=1)
    figure.update_yaxes(tickformat=".0%", row=1, col=2)
    figure.update_layout(**_LAYOUT)
    return figure


def privacy_chart(points: list[PrivacyPoint]) -> go.Figure:
    """Each site's composed epsilon (the server's ledger) after every session it was charged for."""
    by_site: dict[str, list[PrivacyPoint]] = defaultdict(list)
    for p in points:
        by_site[p.site].append(p)
    figure = go.Figure()
    for site, reports in sorted(by_site.items()):
        finite = [p for p in reports if p.epsilon is not None and p.epsilon_total is not None]
        figure.add_trace(go.Scatter(
            x=[p.recorded_at for p in finite], y=[p.epsilon_total for p in finite], mode="lines+markers",
            name=site, text=[f"session {p.session_id} ({p.rounds} rounds): "
                             f"epsilon this session {p.epsilon:.3f}" for p in finite],
            hovertemplate="%{text}<br>total epsilon %{y:.3f}<extra>%{fullData.name}</extra>"))
    figure.update_layout(**_LAYOUT, xaxis_title="approved at (UTC)", yaxis_title="epsilon (composed total)")
    return figure


def lineage_chart(lineage: LineageOut) -> go.Figure:
    """Versions left to right; a version on its parent's lane unless the parent already had a child
    (a rollback or a branch). Merges' second edges are dashed and name weight and staleness."""
    lane = _lanes(lineage)
    versions = {v.number: v for v in lineage.versions}
    figure = go.Figure()
    for merged in (False, True):
        x: list[float | None] = []
        y: list[float | None] = []
        for e in (e for e in lineage.edges if e.merged == merged and e.parent in versions):
            bend = [(e.parent + e.child) / 2] if merged else []  # a merge arcs above the lane
            x += [e.parent, *bend, e.child, None]
            y += [lane[e.parent], *[max(lane[e.parent], lane[e.child]) + 0.45] * len(bend), lane[e.child], None]
            if merged:
                child = versions[e.child]
                figure.add_annotation(x=bend[0], y=y[-3], yshift=10, showarrow=False,
                                      text=f"weight {child.merge_weight:.3f}, staleness {child.staleness}")
        figure.add_trace(go.Scatter(x=x, y=y, mode="lines", hoverinfo="skip", showlegend=False,
                                    line={"dash": "dash" if merged else "solid", "color": "#999999",
                                          "shape": "spline" if merged else "linear"}))
    for kind, colour in _KIND_COLOURS.items():
        nodes = [v for v in lineage.versions if v.kind == kind]
        if nodes:
            figure.add_trace(go.Scatter(
                x=[v.number for v in nodes], y=[lane[v.number] for v in nodes], mode="markers+text",
                name=kind, text=[v.label for v in nodes], textposition="top center",
                marker={"size": 14, "color": colour}, customdata=[_node_text(v) for v in nodes],
                hovertemplate="%{customdata}<extra></extra>"))
    figure.update_layout(**_LAYOUT, xaxis={"title": "version", "dtick": 1},
                         yaxis={"visible": False, "range": [-0.5, max(lane.values(), default=0) + 1.0]})
    return figure


def _lanes(lineage: LineageOut) -> dict[int, int]:
    lane: dict[int, int] = {}
    taken: set[int] = set()
    for v in sorted(lineage.versions, key=lambda v: v.number):
        first = v.parents[0] if v.parents else None
        if first in lane and first not in taken:
            lane[v.number] = lane[first]
        else:
            lane[v.number] = max(lane.values(), default=-1) + 1
        if first is not None:
            taken.add(first)
    return lane


def _node_text(v: VersionSummary) -> str:
    text = f"{v.label} ({v.kind})"
    if v.val_accuracy is not None:
        text += f"<br>val. accuracy {v.val_accuracy:.1%}"
    if v.merge_weight is not None:
        text += f"<br>merged from v{v.parents[-1]}: weight {v.merge_weight:.3f}, staleness {v.staleness}"
    return text
