"""The Flower client: what fit/evaluate return, ledger charging, target epsilon, refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.client import Client

from client.federation.flower_client import build_site_client
from client.training.dp_training import DPConfig
from client.training.ledger import PrivacyLedger
from shared.errors import ConfigError, PrivacyBudgetExceeded
from tests.conftest_client import IMAGE_SIZE

pytestmark = pytest.mark.slow
DELTA = 1e-5


def _config(round_number: int, **extra: object) -> dict:
    config = {"round": round_number, "session_id": "S-1", "local_epochs": 1, "batch_size": 64,
              "learning_rate": 0.2, "proximal_mu": 0.1, "num_rounds": 2}
    return {**config, **extra}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, lesion_root: Path):
    tmp = tmp_path_factory.mktemp("site")
    ledger = PrivacyLedger(tmp / "ledger.db", max_epsilon=20.0, delta=DELTA)
    progress: list[tuple] = []
    client = build_site_client(
        lesion_root, image_size=IMAGE_SIZE, dp=DPConfig(target_epsilon=3.0, delta=DELTA),
        ledger=ledger, cache_dir=tmp / "cache", extra_fit_metrics={"session_secret": "s3cret"},
        progress=lambda *args: progress.append(args),
    )
    return client, ledger, progress


def test_fit_trains_reports_and_charges_the_ledger(site) -> None:
    client, ledger, progress = site
    weights = client.get_parameters({})
    assert [w.shape for w in weights] == [(2048, 256), (256,), (256, 4), (4,)]

    new, examples, metrics = client.fit(weights, _config(1))
    assert [w.shape for w in new] == [w.shape for w in weights]
    assert any(not np.array_equal(a, b) for a, b in zip(new, weights))
    assert examples == client.local.n_train == 320
    assert metrics["session_secret"] == "s3cret"
    assert metrics["epsilon"] == pytest.approx(ledger.spent(DELTA, session_id="S-1"))
    assert metrics["noise_multiplier"] > 0 and metrics["steps"] == 5
    assert {"loss", "accuracy", "epsilon_total", "backbone_fingerprint"} <= set(metrics)
    assert progress == [(1, 1, metrics["loss"], metrics["accuracy"])]

    _, _, second = client.fit(new, _config(2))  # the session's last round
    assert 0.99 * 3.0 <= second["epsilon"] <= 3.0

    loss, n_val, evaluation = client.evaluate(new, {})
    assert n_val == 80 and evaluation["loss"] == loss and 0 <= evaluation["accuracy"] <= 1
    assert isinstance(client.to_client(), Client)


def test_over_budget_round_is_refused_before_training(
    site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, _, _ = site
    tight = PrivacyLedger(tmp_path / "tight.db", max_epsilon=1.0, delta=DELTA)
    monkeypatch.setattr(client, "ledger", tight)  # the session's target (3.0) exceeds this budget
    weights = client.get_parameters({})
    with pytest.raises(PrivacyBudgetExceeded, match="remaining"):
        client.fit(weights, _config(1, session_id="S-2"))
    assert tight.entries() == []
    assert all(np.array_equal(a, b) for a, b in zip(client.get_parameters({}), weights))


def test_missing_config_key_is_a_clear_error(site) -> None:
    client, _, _ = site
    with pytest.raises(ConfigError, match="batch_size"):
        client.fit(client.get_parameters({}), {"round": 1, "session_id": "S-3", "local_epochs": 1,
                                               "learning_rate": 0.1})
