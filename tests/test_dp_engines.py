"""The two DP engines (issue 18): same event, both clip, FedProx in both, refusals that name the rule."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from client.training.dp_training import DPConfig, LocalSettings, train_dp
from client.training.examples import TrainingExamples
from shared.classifier import (
    FEATURE_DIM,
    build_head,
    get_trainable_weights,
    set_trainable_weights,
)
from shared.errors import ConfigError
from shared.privacy_accounting import DpSchedule
from shared.protocol import DP_ENGINES

pytestmark = pytest.mark.slow


def _examples(n: int, seed: int = 0) -> TrainingExamples:
    rng = np.random.default_rng(seed)
    return TrainingExamples.from_arrays(rng.standard_normal((n, FEATURE_DIM)).astype(np.float32),
                                        rng.integers(0, 4, n).astype(np.int32))


def _distance(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return float(np.sqrt(sum(np.sum((x - y) ** 2) for x, y in zip(a, b))))


def test_both_engines_give_the_same_dp_event() -> None:
    schedule = DpSchedule.for_epochs(noise_multiplier=1.3, l2_norm_clip=0.7, examples=80, batch_size=16, epochs=2)
    events = {engine: train_dp(build_head(seed=0), _examples(80), schedule,
                               LocalSettings(0.05, engine=engine)).event for engine in DP_ENGINES}
    assert events["dp-model"] == events["keras-optimizer"] == schedule.event()


@pytest.mark.parametrize("engine", DP_ENGINES)
def test_one_example_with_a_huge_gradient_moves_the_weights_by_at_most_lr_c(engine: str) -> None:
    head = build_head(seed=0)
    output = head.get_layer("head_output")
    output.kernel.assign(output.kernel * 1e4)  # saturated, confidently wrong: a huge gradient
    before = get_trainable_weights(head)
    lr, clip = 0.1, 0.5
    train_dp(head, _examples(1, seed=2), DpSchedule(0.0, 1.0, 1, clip), LocalSettings(lr, engine=engine))
    moved = _distance(get_trainable_weights(head), before)
    assert 0.99 * lr * clip <= moved <= lr * clip * (1 + 1e-5)  # clipped, and the clip was active


@pytest.mark.parametrize("engine", DP_ENGINES)
def test_with_noise_the_step_is_the_clipped_one_plus_noise_of_the_scheduled_size(engine: str) -> None:
    """The same single huge example, with noise: the update is at most lr*C plus lr*sigma*C*sqrt(d)-ish."""
    head = build_head(seed=0)
    output = head.get_layer("head_output")
    output.kernel.assign(output.kernel * 1e4)
    before = get_trainable_weights(head)
    lr, clip, sigma = 0.1, 0.5, 1.0
    train_dp(head, _examples(1, seed=2), DpSchedule(sigma, 1.0, 1, clip), LocalSettings(lr, engine=engine))
    dimension = sum(w.size for w in before)
    noise_norm = lr * sigma * clip * np.sqrt(dimension)
    assert abs(_distance(get_trainable_weights(head), before) - noise_norm) <= lr * clip + 0.01 * noise_norm


@pytest.mark.parametrize("engine", DP_ENGINES)
def test_fedprox_pulls_toward_the_global_weights(engine: str) -> None:
    head = build_head(seed=0)
    w_global = get_trainable_weights(head)
    examples = _examples(64, seed=4)

    def drift(mu: float) -> float:
        set_trainable_weights(head, w_global)
        train_dp(head, examples, DpSchedule(0.0, 1.0, 8, 1.0),
                 LocalSettings(learning_rate=0.5, proximal_mu=mu, engine=engine))
        return _distance(get_trainable_weights(head), w_global)

    assert 0 < drift(2.0) < 0.8 * drift(0.0)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_both_engines_take_sgd_and_adam(optimizer: str) -> None:
    for engine in DP_ENGINES:
        result = train_dp(build_head(seed=0), _examples(40), DpSchedule(1.0, 0.25, 3, 1.0),
                          LocalSettings(0.01, optimizer=optimizer, engine=engine))
        assert result.steps == 3 and all(np.all(np.isfinite(w)) for w in result.weights)


def test_the_optimizer_engine_is_refused_under_a_global_seed_naming_the_rule() -> None:
    tf.random.set_seed(3)
    try:
        with pytest.raises(ConfigError, match="noise is never seeded"):
            train_dp(build_head(seed=0), _examples(8), DpSchedule(1.0, 0.5, 1, 1.0),
                     LocalSettings(0.1, engine="keras-optimizer"))
        result = train_dp(build_head(seed=0), _examples(8), DpSchedule(1.0, 0.5, 1, 1.0), LocalSettings(0.1))
        assert result.engine == "dp-model"  # its generator is the OS's, whatever the global seed
    finally:
        tf.random.set_seed(None)


def test_unknown_engines_and_optimizers_are_refused() -> None:
    with pytest.raises(ConfigError, match="engine"):
        DPConfig(noise_multiplier=1.0, engine="fast")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="engine"):
        train_dp(build_head(seed=0), _examples(4), DpSchedule(1.0, 0.5, 1, 1.0),
                 LocalSettings(0.1, engine="fast"))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="optimizer"):
        train_dp(build_head(seed=0), _examples(4), DpSchedule(1.0, 0.5, 1, 1.0),
                 LocalSettings(0.1, optimizer="rmsprop"))  # type: ignore[arg-type]
