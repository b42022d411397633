"""The membership-inference attacks of ``bench.privacy_audit``: high AUC where members stand out, ~0.5 where not."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm

from bench.membership_inference import (
    ModelOutputs,
    logistic_regression_attack,
    run_attacks,
    score,
    strongest,
)

CLASSES = 4


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
    assert strongest(results).auc == max(r.auc for r in results)


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
