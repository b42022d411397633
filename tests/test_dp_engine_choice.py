"""Choosing the DP engine (issue 18): profile and request carry it, the site sees it, versions record it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
from pydantic import ValidationError
from rich.console import Console

from client.menu.actions import dp_request
from client.menu.views import dp_text
from client.site_profile import SiteProfile
from server.history.version_views import privacy_table
from server.sessions.fedprox import AdmittedFedProx
from shared import protocol

DP = {"noise_multiplier": 1.0, "delta": 1e-5, "l2_norm_clip": 1.0}


def _profile(tmp_path: Path, **fields) -> SiteProfile:
    return SiteProfile(site="north", state_dir=tmp_path, data_root=tmp_path, token="t", **fields)


def test_the_request_message_carries_a_known_engine_only() -> None:
    assert protocol.DpSpec(**DP).engine == "dp-model"
    assert protocol.DpSpec(**DP, engine="keras-optimizer").engine == "keras-optimizer"
    with pytest.raises(ValidationError):
        protocol.DpSpec(**DP, engine="fast")
    assert protocol.DP_ENGINES == ("dp-model", "keras-optimizer")


def test_requests_take_the_profile_engine_unless_told_otherwise(tmp_path: Path) -> None:
    assert dp_request(_profile(tmp_path), target_epsilon=1.0, noise=None)["engine"] == "dp-model"
    optimizer_site = _profile(tmp_path, dp_engine="keras-optimizer")
    assert dp_request(optimizer_site, target_epsilon=1.0, noise=None)["engine"] == "keras-optimizer"
    assert dp_request(optimizer_site, target_epsilon=None, noise=1.0, engine="dp-model")["engine"] == "dp-model"
    with pytest.raises(ValidationError):
        _profile(tmp_path, dp_engine="fast")


def test_the_site_sees_the_engine_of_each_request() -> None:
    assert dp_text({**DP, "engine": "keras-optimizer"}).endswith("keras-optimizer")
    assert dp_text(DP).endswith("dp-model")  # requests sent before engines existed


class _Proxy:
    cid = "c"


def _fit_result(site: str, engine: str) -> tuple[_Proxy, FitRes]:
    metrics = {"site": site, "session_secret": "s", "epsilon": 1.5, "delta": 1e-5, "noise_multiplier": 1.1,
               "dp_engine": engine}
    return _Proxy(), FitRes(Status(Code.OK, ""), ndarrays_to_parameters([np.zeros(3)]), 10, metrics)


def test_the_session_records_each_sites_engine_and_drops_unknown_text() -> None:
    strategy = AdmittedFedProx(
        participants=["north", "south"], verify_secret=lambda site, secret: secret == "s",
        initial_weights=[np.zeros(3)], proximal_mu=0.0, round_config={}, min_results=2, max_update_norm=10.0,
        on_round=lambda *args: None, on_reject=lambda *args: None,
    )
    strategy.aggregate_fit(1, [_fit_result("north", "keras-optimizer"), _fit_result("south", "[red]x")], [])
    assert strategy.privacy_report["north"]["dp_engine"] == "keras-optimizer"
    assert "dp_engine" not in strategy.privacy_report["south"]
    assert strategy.privacy_report["south"]["epsilon"] == 1.5


def test_version_details_show_the_engine_escaped() -> None:
    console = Console(width=200, record=True)
    console.print(privacy_table({"north": {"epsilon": 1.0, "dp_engine": "keras-optimizer"},
                                 "south": {"epsilon": 2.0, "dp_engine": "[bold]x[/bold]"}}))
    text = console.export_text()
    assert "DP engine" in text and "keras-optimizer" in text and "[bold]x[/bold]" in text
