"""Membership-inference attacks on a classifier's outputs, the way TF-Privacy's ``privacy_tests`` runs them.

TF-Privacy's ``privacy_tests.membership_inference_attack`` is not in the tensorflow-privacy 0.9.0
wheel, and its separate release (``tensorflow-empirical-privacy`` 0.1.0) needs TensorFlow 2.20 and
protobuf 7, which our pins exclude. So the attacks it runs by default are written out here, small,
on the same inputs (each example's predicted class probabilities and its true label, for
"members", the model's training examples, and "non-members" from the same distribution that it
never saw), scored the same way (scikit-learn's ROC AUC, and the attacker advantage max |TPR - FPR|):

- ``loss threshold``: rank examples by their cross-entropy loss, lower = member (Yeom et al. 2018;
  TF-Privacy's ``THRESHOLD_ATTACK``). The true-class confidence ``exp(-loss)`` ranks them the same
  way, so this is also the confidence-threshold attack.
- ``entropy threshold``: rank by the entropy of the prediction, lower = member (label-free;
  ``THRESHOLD_ENTROPY_ATTACK``).
- ``logistic regression``: a logistic-regression classifier on (class probabilities, loss),
  its ``C`` picked by 3-fold grid search as TF-Privacy's ``LogisticRegressionAttacker`` does.
  Trained on one part of the attack's own data and scored on the other, in ``folds`` stratified
  folds, so every example is scored once by a model that never saw it (TF-Privacy's
  ``_run_trained_attack``). Members and non-members are weighted equally (``class_weight``
  instead of TF-Privacy's subsampling, so no example is left out).

An AUC of 0.5 means the attacker cannot tell members from non-members; an AUC below 0.5 is
reported as is (not flipped), so chance stays unbiased. Everything here is NumPy and
scikit-learn, no TensorFlow: the bench computes the probabilities, this module only attacks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score, roc_curve
from sklearn.model_selection import GridSearchCV, StratifiedKFold

#: Probabilities are floored here before a log (a 0 would give an infinite loss).
_FLOOR = 1e-12
#: The regularisation strengths the logistic-regression attack chooses from (TF-Privacy's grid).
_C_GRID = np.logspace(-4, 2, 10)


@dataclass(frozen=True)
class AttackResult:
    """One attack's score: ROC AUC and attacker advantage, both 0.5 / 0 at chance."""

    name: str
    auc: float
    advantage: float


@dataclass(frozen=True)
class ModelOutputs:
    """What a black-box attacker sees of some examples: class probabilities and true labels."""

    probabilities: np.ndarray  # (n, classes)
    labels: np.ndarray  # (n,) int

    def __post_init__(self) -> None:
        if self.probabilities.ndim != 2 or self.labels.shape != (self.probabilities.shape[0],):
            raise ValueError(f"need (n, classes) probabilities and (n,) labels, got "
                             f"{self.probabilities.shape} and {self.labels.shape}")

    def losses(self) -> np.ndarray:
        """Per-example cross-entropy ``-log p[label]``."""
        true_class = self.probabilities[np.arange(len(self.labels)), self.labels]
        return -np.log(np.maximum(true_class, _FLOOR))

    def entropies(self) -> np.ndarray:
        p = np.maximum(self.probabilities, _FLOOR)
        return -np.sum(p * np.log(p), axis=1)

    def attack_features(self) -> np.ndarray:
        """TF-Privacy's trained-attack features: the probabilities with the loss beside them."""
        return np.column_stack([self.probabilities, self.losses()])


def score(name: str, member_scores: np.ndarray, nonmember_scores: np.ndarray) -> AttackResult:
    """AUC and advantage of ``member_scores`` vs ``nonmember_scores`` (higher = "member")."""
    truth = np.concatenate([np.ones(len(member_scores)), np.zeros(len(nonmember_scores))])
    scores = np.concatenate([member_scores, nonmember_scores])
    fpr, tpr, _ = roc_curve(truth, scores)
    return AttackResult(name, float(roc_auc_score(truth, scores)), float(np.max(np.abs(tpr - fpr))))


def loss_threshold_attack(members: ModelOutputs, nonmembers: ModelOutputs) -> AttackResult:
    return score("loss threshold", -members.losses(), -nonmembers.losses())


def entropy_threshold_attack(members: ModelOutputs, nonmembers: ModelOutputs) -> AttackResult:
    return score("entropy threshold", -members.entropies(), -nonmembers.entropies())


def logistic_regression_attack(
    members: np.ndarray, nonmembers: np.ndarray, *, folds: int = 2, seed: int = 0
) -> AttackResult:
    """A logistic-regression attacker on feature rows, each row scored out of fold."""
    x = np.concatenate([members, nonmembers]).astype(np.float64)
    truth = np.concatenate([np.ones(len(members)), np.zeros(len(nonmembers))])
    scores = np.full(len(truth), np.nan)
    splits = StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, truth)
    for train, test in splits:
        attacker = GridSearchCV(
            LogisticRegression(class_weight="balanced", max_iter=1000), {"C": _C_GRID}, cv=3,
            scoring="roc_auc",
        )
        attacker.fit(x[train], truth[train])
        scores[test] = attacker.predict_proba(x[test])[:, 1]
    return score("logistic regression", scores[truth == 1], scores[truth == 0])


def run_attacks(members: ModelOutputs, nonmembers: ModelOutputs, *, seed: int = 0) -> list[AttackResult]:
    """All three attacks on the same model outputs."""
    return [
        loss_threshold_attack(members, nonmembers),
        entropy_threshold_attack(members, nonmembers),
        logistic_regression_attack(members.attack_features(), nonmembers.attack_features(), seed=seed),
    ]

