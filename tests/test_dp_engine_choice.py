"""Choosing the DP engine (issue 18): profile and request carry it, the site sees it, versions record it."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError
from rich.console import Console

from client.menu.actions import dp_request
from client.menu.views import dp_text
from client.site_profile import SiteProfile
from server.history.version_views import privacy_table
from server.sessions.privacy_plan import privacy_summary
from server.store import Store
from shared import protocol
from tests.conftest_store import make_weights
from tests.privacy_fixtures import charged_session

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


def test_each_sites_engine_comes_from_its_request_into_the_version(store: Store, sites: dict) -> None:
    """The engine is a declaration the request carries (checked against DP_ENGINES on arrival), not
    something a site reports with its results: the version's privacy summary names it per site."""
    store.ensure_initial_version(make_weights(0), metadata={})
    session = charged_session(store, {"alpha": 20, "beta": 20}, rounds=1, engines={"alpha": "keras-optimizer"})
    summary = privacy_summary(store, session.id, ["alpha", "beta"])
    assert summary["alpha"]["dp_engine"] == "keras-optimizer" and summary["beta"]["dp_engine"] == "dp-model"


def test_version_details_show_the_engine_escaped() -> None:
    console = Console(width=200, record=True)
    console.print(privacy_table({"north": {"epsilon": 1.0, "dp_engine": "keras-optimizer"},
                                 "south": {"epsilon": 2.0, "dp_engine": "[bold]x[/bold]"}}))
    text = console.export_text()
    assert "DP engine" in text and "keras-optimizer" in text and "[bold]x[/bold]" in text
