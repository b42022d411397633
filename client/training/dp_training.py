"""DP-SGD local training with TF-Privacy's DP-Keras model, plus the FedProx proximal term.

Clipping and noise come from ``tensorflow_privacy``'s ``DPModel``: it computes per-example
gradient norms with the fast ("ghost norm") trick when every trainable layer is in its layer
registry (the dense head: a Dense layer's per-example gradient norm is ``|x| * |dL/dz|``), and
falls back to vectorised per-example gradients otherwise (unfrozen ResNet stages). Either way
each example's gradient is clipped to ``l2_norm_clip`` and Gaussian noise of standard deviation
``noise_multiplier * l2_norm_clip`` is added to the sum before averaging. DPModel works on a
mean-reduced Keras loss and derives the per-example (reduction NONE) loss from it itself.

FedProx: ``DPModel.train_step`` adds the gradients of ``model.losses`` *after* clipping and
noise (they must be data-independent). The proximal term ``mu/2 * |w - w_global|^2`` is such a
loss, so its gradient ``mu * (w - w_global)`` joins the noisy gradient there and costs no
privacy: the DpEvent of a run does not depend on ``mu``. ``w_global`` is the model's trainable
weights when ``train_dp`` is called, i.e. the weights received at the start of the round.

Neither the noise nor the batch shuffling is seeded: a known seed would let anyone undo the
noise or the sampling.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import dp_accounting
import numpy as np
import tensorflow as tf
from tensorflow_privacy.privacy.fast_gradient_clipping import layer_registry
from tensorflow_privacy.privacy.keras_models.dp_keras_model import DPModel

from shared.classifier import get_trainable_weights
from shared.errors import ConfigError
from shared.privacy_accounting import dp_sgd_event

#: Called after every local epoch with (epoch, loss, accuracy).
EpochCallback = Callable[[int, float, float], None]


@dataclass(frozen=True)
class DPConfig:
    """A site's DP parameters: give ``noise_multiplier`` or ``target_epsilon`` (per session)."""

    delta: float = 1e-5
    l2_norm_clip: float = 1.0
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    optimizer: Literal["sgd", "adam"] = "sgd"

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


@dataclass(frozen=True)
class LocalTraining:
    """One round's local training settings (from the server's round config)."""

    epochs: int
    batch_size: int
    learning_rate: float
    proximal_mu: float = 0.0


@dataclass(frozen=True)
class TrainResult:
    """What one DP training run produced; ``event`` is its privacy cost."""

    weights: list[np.ndarray]
    loss: float
    accuracy: float
    examples: int
    steps: int
    event: dp_accounting.DpEvent


def train_dp(
    model: tf.keras.Model,
    dataset: tf.data.Dataset,
    examples: int,
    *,
    noise_multiplier: float,
    dp: DPConfig,
    local: LocalTraining,
    on_epoch: EpochCallback | None = None,
) -> TrainResult:
    """Train ``model``'s trainable variables with DP-SGD (+ FedProx) on unbatched (x, y) pairs.

    ``examples`` is the dataset size, needed for the privacy accounting. Returns the new
    trainable weights, the run's mean cross-entropy and accuracy, and its DpEvent.
    """
    trainer = make_dp_trainer(model, noise_multiplier=noise_multiplier, dp=dp, local=local)
    batches = dataset.shuffle(examples).batch(local.batch_size).prefetch(tf.data.AUTOTUNE)
    history = trainer.fit(
        batches, epochs=local.epochs, verbose=0, callbacks=_callbacks(on_epoch)
    ).history
    event = dp_sgd_event(noise_multiplier, examples, local.batch_size, local.epochs)
    steps = int(trainer.optimizer.iterations.numpy())
    if steps != event.count:  # the accounting would not describe what ran
        raise RuntimeError(f"ran {steps} DP steps but the privacy event counts {event.count}")
    return TrainResult(
        weights=get_trainable_weights(model),
        loss=float(history["cross_entropy"][-1]),
        accuracy=float(history["accuracy"][-1]),
        examples=examples,
        steps=steps,
        event=event,
    )


def make_dp_trainer(
    model: tf.keras.Model, *, noise_multiplier: float, dp: DPConfig, local: LocalTraining
) -> DPModel:
    """A compiled DPModel over ``model``'s graph: same layers and variables, DP train step.

    TF-Privacy's default registry gives Dense layers fast norms; XLA is left to Keras' defaults
    so the same code runs on CPU and GPU.
    """
    trainer = DPModel(
        l2_norm_clip=dp.l2_norm_clip,
        noise_multiplier=noise_multiplier,
        use_xla=False,
        layer_registry=layer_registry.make_default_layer_registry(),
        inputs=model.inputs,
        outputs=model.outputs,
    )
    if local.proximal_mu > 0:
        trainer.add_loss(_proximal_loss(model, local.proximal_mu))
    trainer.compile(
        optimizer=_optimizer(dp.optimizer, local.learning_rate),
        loss=tf.keras.losses.SparseCategoricalCrossentropy(),
        metrics=[
            tf.keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
            tf.keras.metrics.SparseCategoricalCrossentropy(name="cross_entropy"),
        ],
    )
    return trainer


def _proximal_loss(model: tf.keras.Model, mu: float) -> Callable[[], tf.Tensor]:
    """``mu/2 * |w - w_global|^2`` over the trainable variables, ``w_global`` frozen now."""
    variables = model.trainable_variables
    anchors = [tf.constant(variable.numpy()) for variable in variables]

    def loss() -> tf.Tensor:
        squares = [tf.reduce_sum(tf.square(v - a)) for v, a in zip(variables, anchors)]
        return 0.5 * mu * tf.add_n(squares)

    return loss


def _optimizer(name: str, learning_rate: float) -> tf.keras.optimizers.Optimizer:
    if name == "adam":
        return tf.keras.optimizers.Adam(learning_rate)
    return tf.keras.optimizers.SGD(learning_rate)


def _callbacks(on_epoch: EpochCallback | None) -> list[tf.keras.callbacks.Callback]:
    if on_epoch is None:
        return []
    return [
        tf.keras.callbacks.LambdaCallback(
            on_epoch_end=lambda epoch, logs: on_epoch(
                epoch + 1, float(logs["cross_entropy"]), float(logs["accuracy"])
            )
        )
    ]
