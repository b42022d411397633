"""The membership-inference attacks of ``bench.privacy_audit``: high AUC where members stand out, ~0.5 where not."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import norm

from bench.membership_inference import (
    ModelOutputs,
    logistic_regression_attack,
    run_attacks,
    score,
)

CLASSES = 4
ROOT = Path(__file__).resolve().parents[1]


def _outputs(rng: np.random.Generator, n: int, true_mass: tuple[float, float]) -> ModelOutputs:
    """``n`` predictions whose true-class probability is uniform in ``true_mass``, the rest spread."""
    labels = rng.integers(0, CLASSES, n)
    true_p = rng.uniform(*true_mass, n)
    rest = rng.dirichlet(np.ones(CLASSES - 1), n) * (1 - true_p)[:, None]
    probabilities = np.empty((n, CLASSES))
    for i, label in enumerate(labels):
        probabilities[i] = np.insert(rest[i], label, true_p[i])
    return ModelOutputs(probabilities, labels)


def test_a_memorised_training_set_is_found_by_every_attack() -> None:
    rng = np.random.default_rng(1)
    members = _outputs(rng, 300, (0.95, 1.0))  # confident and right: what an overfit model does
    nonmembers = _outputs(rng, 300, (0.05, 0.6))
    results = run_attacks(members, nonmembers)
    assert [r.name for r in results] == ["loss threshold", "entropy threshold", "logistic regression"]
    for result in results:
        assert result.auc > 0.95, result
        assert result.advantage > 0.8, result


@pytest.mark.parametrize("seed", [2, 3])
def test_identical_distributions_score_chance(seed: int) -> None:
    rng = np.random.default_rng(seed)
    members, nonmembers = _outputs(rng, 1500, (0.2, 0.9)), _outputs(rng, 1500, (0.2, 0.9))
    results = run_attacks(members, nonmembers, seed=seed)
    for result in results:  # the AUC's standard deviation here is about 0.011
        assert abs(result.auc - 0.5) < 0.05, result


def test_the_auc_is_the_probability_that_a_member_outscores_a_non_member() -> None:
    """Two unit normals ``d`` apart: AUC = Phi(d / sqrt 2); the direction is "higher = member"."""
    rng = np.random.default_rng(4)
    d = 0.8
    result = score("shift", rng.normal(d, 1, 20000), rng.normal(0, 1, 20000))
    assert result.auc == pytest.approx(norm.cdf(d / math.sqrt(2)), abs=0.01)
    assert score("flipped", rng.normal(0, 1, 20000), rng.normal(d, 1, 20000)).auc < 0.35


def test_the_trained_attack_is_scored_on_examples_it_did_not_fit() -> None:
    """Pure noise in many dimensions: a model scored on its own training rows would look strong."""
    rng = np.random.default_rng(5)
    members, nonmembers = rng.normal(size=(150, 60)), rng.normal(size=(150, 60))
    assert abs(logistic_regression_attack(members, nonmembers).auc - 0.5) < 0.1
    shifted = members + 0.5  # a real difference is still found out of fold
    assert logistic_regression_attack(shifted, nonmembers).auc > 0.9


def test_losses_are_the_true_class_cross_entropy_and_shapes_are_checked() -> None:
    outputs = ModelOutputs(np.array([[0.5, 0.25, 0.25, 0.0], [0.0, 0.0, 0.0, 1.0]]), np.array([1, 3]))
    np.testing.assert_allclose(outputs.losses(), [math.log(4), 0.0], atol=1e-12)
    with pytest.raises(ValueError, match="classes"):
        ModelOutputs(np.ones((3, 4)), np.zeros(2, dtype=int))


def _audit(tmp_path: Path, *args: str) -> tuple[int, list[str]]:
    """``python -m bench.privacy_audit`` on memorisable random features, tiny: (exit code, stdout lines)."""
    run = subprocess.run(
        [sys.executable, "-m", "bench.privacy_audit", "--random-features", "--members", "50", "--batch-size", "10",
         "--repeats", "1", *args],
        check=False, cwd=ROOT, env={**os.environ, "FL_HOME": str(tmp_path)}, capture_output=True, text=True,
        timeout=600,
    )
    return run.returncode, run.stdout.strip().splitlines()


@pytest.mark.slow
def test_the_audit_bench_finds_the_overfit_head_and_much_less_under_dp(tmp_path: Path) -> None:
    code, lines = _audit(tmp_path, "--epochs", "100")
    assert code == 0, lines
    assert [line.split()[0] for line in lines[-2:]] == ["mia_auc_no_dp", "mia_auc_dp"]
    no_dp, dp = (float(line.split()[1]) for line in lines[-2:])
    assert no_dp > 0.9 and dp < no_dp - 0.15, lines  # noise-free training on 50 examples is memorised
    assert any("epsilon 4.00 (PLD" in line for line in lines), lines


@pytest.mark.slow
def test_the_audit_bench_fails_when_the_attack_finds_nothing_without_dp(tmp_path: Path) -> None:
    code, lines = _audit(tmp_path, "--epochs", "1", "--lr", "1e-4")  # the head barely moves
    assert code == 1, lines
    assert any(line.startswith("FAILED: without DP") for line in lines), lines
    assert lines[-1].startswith("mia_auc_dp ")
