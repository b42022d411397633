"""The Flower client: it trains only the approved schedule, charges it, and sends nothing else data-dependent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.client import Client

from client.federation.flower_client import build_site_client
from client.training.dp_training import DPConfig
from client.training.ledger import PrivacyLedger
from client.training.privacy_contract import RequestTerms
from shared.errors import ConfigError, PrivacyBudgetExceeded, ProtocolError
from shared.privacy_accounting import (
    SCHEDULE_PREFIX,
    DpSchedule,
    bucket_examples,
    calibrate_noise,
    epsilon_for,
)
from tests.conftest_client import IMAGE_SIZE

pytestmark = pytest.mark.slow
DELTA = 1e-5
DP = {"target_epsilon": 3.0, "delta": DELTA, "l2_norm_clip": 1.0}
DECLARED = bucket_examples(320)  # the lesion set's 320 training images, as the site declares them: 400
TERMS = RequestTerms.of(2, 1, DP, {"examples": DECLARED})


def _schedule(noise: float) -> DpSchedule:
    return DpSchedule.for_epochs(noise_multiplier=noise, l2_norm_clip=1.0, examples=DECLARED, batch_size=64, epochs=1)


#: What the server decides at approval for this request: the noise whose 2 rounds spend epsilon 3.
APPROVED = _schedule(calibrate_noise(3.0, DELTA, lambda noise: _schedule(noise).session_event(2)))


def _config(round_number: int, schedule: DpSchedule = APPROVED, **extra: object) -> dict:
    config = {"round": round_number, "session_id": "S-1", "local_epochs": 1, "batch_size": 64,
              "learning_rate": 0.2, "proximal_mu": 0.1, "num_rounds": 2, "examples": DECLARED,
              **schedule.to_dict(SCHEDULE_PREFIX)}
    return {**config, **extra}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, lesion_root: Path):
    tmp = tmp_path_factory.mktemp("site")
    ledger = PrivacyLedger(tmp / "ledger.db", max_epsilon=20.0, delta=DELTA)
    progress: list[tuple] = []
    client = build_site_client(
        lesion_root, image_size=IMAGE_SIZE, dp=DPConfig(**DP), terms=TERMS,
        ledger=ledger, cache_dir=tmp / "cache", extra_fit_metrics={"session_secret": "s3cret"},
        progress=lambda *args: progress.append(args),
    )
    return client, ledger, progress


def test_fit_trains_the_approved_schedule_charges_it_and_sends_nothing_data_dependent(site) -> None:
    client, ledger, progress = site
    weights = client.get_parameters({})
    assert [w.shape for w in weights] == [(2048, 256), (256,), (256, 4), (4,)]

    new, examples, metrics = client.fit(weights, _config(1))
    assert [w.shape for w in new] == [w.shape for w in weights]
    assert any(not np.array_equal(a, b) for a, b in zip(new, weights))
    assert client.local.n_train == 320 and examples == DECLARED  # the declared bucket, not the exact count
    assert metrics == {"round": 1, "backbone_fingerprint": client.fingerprint, "session_secret": "s3cret"}
    assert [entry.event for entry in ledger.entries("S-1")] == [APPROVED.event()]
    assert len(progress) == 1 and progress[0][:2] == (1, 1)  # the loss stays on the site's screen

    client.fit(new, _config(2))  # the session's last round
    assert 0.99 * 3.0 <= ledger.spent(DELTA, session_id="S-1") <= 3.0
    assert ledger.spent(DELTA, session_id="S-1") == pytest.approx(epsilon_for(APPROVED.session_event(2), DELTA))

    with pytest.raises(ProtocolError, match="validation metrics"):
        client.evaluate(new, {})
    assert isinstance(client.to_client(), Client)


def test_a_schedule_the_request_does_not_allow_is_refused_before_anything_is_charged(
    site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, _, _ = site
    fresh = PrivacyLedger(tmp_path / "fresh.db", max_epsilon=20.0, delta=DELTA)
    monkeypatch.setattr(client, "ledger", fresh)
    weights = client.get_parameters({})
    less_noise = _schedule(0.5 * APPROVED.noise_multiplier)
    with pytest.raises(PrivacyBudgetExceeded, match="refusing the server's DP schedule: epsilon"):
        client.fit(weights, _config(1, less_noise, session_id="S-4"))
    with pytest.raises(PrivacyBudgetExceeded, match="3 rounds"):
        client.fit(weights, _config(1, num_rounds=3, session_id="S-4"))
    assert fresh.entries() == []
    assert all(np.array_equal(a, b) for a, b in zip(client.get_parameters({}), weights))


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
    config = _config(1, session_id="S-3")
    del config["batch_size"]
    with pytest.raises(ConfigError, match="batch_size"):
        client.fit(client.get_parameters({}), config)


def test_validation_stays_for_the_secure_sum_and_matches_the_model(site) -> None:
    """``validate`` (what the secure wrapper masks) is the model's own loss and accuracy on the split."""
    client, _, _ = site
    weights = client.get_parameters({})
    loss, examples, metrics = client.validate(weights)
    x, y = next(iter(client.local.val.batch(10_000)))
    probabilities = client.local.model(x, training=False).numpy()
    expected_loss = float(np.mean(-np.log(probabilities[np.arange(len(y)), y.numpy()])))
    assert examples == client.local.n_val == len(y) > 0
    assert loss == pytest.approx(expected_loss, rel=1e-5)
    assert metrics["accuracy"] == pytest.approx(float(np.mean(probabilities.argmax(axis=1) == y.numpy())))
    assert metrics["session_secret"] == "s3cret"  # the admission proof, for the masked result
