"""DP-SGD local training: exactly the run a ``DpSchedule`` describes, plus the FedProx term.

The contract with the accountant (``shared.privacy_accounting.DpSchedule``), kept here:

- ``schedule.steps`` steps, no more, no fewer: the optimizer's iteration count is checked
  against it and ``TrainResult.event`` is ``schedule.event()``.
- Poisson subsampling in every step (``poisson_sampling``): each example joins independently with
  probability ``schedule.sampling_rate`` from an OS-seeded generator; the realised batch sizes
  are Binomial, possibly 0, and returned in ``TrainResult.batch_sizes`` for the site's own checks
  (they depend on ``n``: they never leave the site).
- Each example's gradient clipped to ``l2_norm_clip``, Gaussian noise of standard deviation
  ``noise_multiplier * l2_norm_clip`` on the sum, the sum divided by the expected batch size
  ``q * n`` (``dp_engines``), an empty step noised all the same.

FedProx: the proximal gradient ``mu * (w - w_global)`` is data-independent, so it is added after
clipping and noise and costs no privacy: the DpEvent of a run does not depend on ``mu``.
``w_global`` is the model's trainable weights when ``train_dp`` is called, i.e. the weights
received at the start of the round.

Speed: examples live in one tensor (``examples``); a whole "epoch" of steps (sampling, gather,
clipping, noise, update) runs inside one ``tf.function`` loop, so the per-step cost is the
arithmetic, not Python or ``tf.data``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import dp_accounting
import numpy as np
import tensorflow as tf

from client.training.dp_engines import Engine, OptimizerName, make_engine
from client.training.examples import TrainingExamples
from client.training.poisson_sampling import (
    epoch_boundaries,
    os_seeded_generator,
    poisson_sample,
)
from shared.classifier import get_trainable_weights
from shared.errors import ConfigError
from shared.privacy_accounting import DpSchedule
from shared.protocol import DP_ENGINES, DpEngine

#: Called after every "epoch" of steps (about 1/q of them) with (epoch, loss, accuracy).
EpochCallback = Callable[[int, float, float], None]


@dataclass(frozen=True)
class DPConfig:
    """A site's DP parameters: ``noise_multiplier`` or ``target_epsilon`` (per session), the engine."""

    delta: float = 1e-5
    l2_norm_clip: float = 1.0
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    optimizer: OptimizerName = "sgd"
    engine: DpEngine = "dp-model"

    def __post_init__(self) -> None:
        if (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise ConfigError("give exactly one of noise_multiplier and target_epsilon")
        if self.noise_multiplier is not None and self.noise_multiplier < 0:
            raise ConfigError(f"noise_multiplier must be >= 0 (got {self.noise_multiplier})")
        if self.target_epsilon is not None and self.target_epsilon <= 0:
            raise ConfigError(f"target_epsilon must be > 0 (got {self.target_epsilon})")
        if not 0 < self.delta < 1 or self.l2_norm_clip <= 0:
            raise ConfigError(f"need 0 < delta < 1 and l2_norm_clip > 0 (got {self})")
        if self.optimizer not in ("sgd", "adam"):
            raise ConfigError(f"optimizer must be 'sgd' or 'adam' (got {self.optimizer!r})")
        if self.engine not in DP_ENGINES:
            raise ConfigError(f"engine must be one of {', '.join(DP_ENGINES)} (got {self.engine!r})")


@dataclass(frozen=True)
class LocalSettings:
    """What the schedule leaves to the site: step size, proximal weight, optimizer, engine."""

    learning_rate: float
    proximal_mu: float = 0.0
    optimizer: OptimizerName = "sgd"
    engine: DpEngine = "dp-model"

    def __post_init__(self) -> None:
        if self.learning_rate <= 0 or self.proximal_mu < 0:
            raise ConfigError(f"need learning_rate > 0 and proximal_mu >= 0 (got {self})")


@dataclass(frozen=True)
class TrainResult:
    """What one DP training run produced; ``event`` is its privacy cost, ``batch_sizes`` stay local."""

    weights: list[np.ndarray]
    loss: float
    accuracy: float
    examples: int
    steps: int
    event: dp_accounting.DpEvent
    engine: str
    batch_sizes: tuple[int, ...] = field(repr=False, default=())


def train_dp(
    model: tf.keras.Model,
    examples: TrainingExamples,
    schedule: DpSchedule,
    settings: LocalSettings,
    *,
    on_epoch: EpochCallback | None = None,
) -> TrainResult:
    """Run ``schedule`` on ``model``'s trainable variables; return the new weights and the event.

    ``loss``/``accuracy`` are the mean cross-entropy and accuracy over the examples sampled in
    the last epoch of steps (local display only: not privatised).
    """
    generator = os_seeded_generator()
    engine = make_engine(
        settings.engine, model, schedule, examples.size, learning_rate=settings.learning_rate,
        proximal_mu=settings.proximal_mu, optimizer=settings.optimizer, noise=generator,
    )
    run = sampled_step_loop(engine, examples, schedule.sampling_rate, generator)
    start = int(engine.iterations.numpy())
    sizes: list[int] = []
    loss, accuracy = float("nan"), float("nan")
    for epoch, end in enumerate(epoch_boundaries(schedule.steps, schedule.sampling_rate), start=1):
        batch_sizes, loss_sum, correct = run(tf.constant(end - len(sizes)))
        sizes.extend(int(size) for size in batch_sizes.numpy())
        seen = max(1, int(np.sum(batch_sizes)))
        loss, accuracy = float(loss_sum) / seen, float(correct) / seen
        if on_epoch is not None:
            on_epoch(epoch, loss, accuracy)
    ran = int(engine.iterations.numpy()) - start
    if ran != schedule.steps or len(sizes) != schedule.steps:  # the event would not describe the run
        raise RuntimeError(f"ran {ran} DP steps but the schedule counts {schedule.steps}")
    return TrainResult(
        weights=get_trainable_weights(model),
        loss=loss,
        accuracy=accuracy,
        examples=examples.size,
        steps=ran,
        event=schedule.event(),
        engine=engine.name,
        batch_sizes=tuple(sizes),
    )


def sampled_step_loop(
    engine: Engine, examples: TrainingExamples, rate: float, generator: tf.random.Generator
) -> Callable[[tf.Tensor], tuple[tf.Tensor, tf.Tensor, tf.Tensor]]:
    """A ``tf.function`` running ``steps`` Poisson-sampled steps of ``engine``.

    It returns the realised batch sizes, the summed loss and the count of correct predictions.
    """
    n = examples.size

    @tf.function
    def run(steps: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        sizes = tf.TensorArray(tf.int32, size=steps)
        loss_sum, correct = tf.constant(0.0), tf.constant(0.0)
        for i in tf.range(steps):
            indices = poisson_sample(generator, n, rate)
            x, y = examples.batch(indices)
            step_loss, step_correct = engine.step(x, y)
            sizes = sizes.write(i, tf.size(indices))
            loss_sum += step_loss
            correct += step_correct
        return sizes.stack(), loss_sum, correct

    return run
