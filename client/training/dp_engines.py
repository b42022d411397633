"""The two DP-SGD engines a site can choose: one step each, the same privacy rules in both.

Every step of either engine, on a Poisson sample of realised size ``m`` (possibly 0):

1. clips each example's gradient to ``C`` and sums them;
2. adds Gaussian noise of standard deviation ``sigma * C`` to the sum (also when ``m == 0``);
3. divides by the *expected* batch size ``q * n``, never by ``m`` (dividing by the realised size
   would make the update's scale depend on the sample, which the accountant does not analyse);
4. adds the FedProx proximal gradient ``mu * (w - w_global)``, data-independent, so after the
   noise and free of privacy cost;
5. lets the optimizer (SGD or Adam) apply it.

``dp-model`` (default): steps 1-3 are ours, on TF-Privacy's ghost-norm layer registry and its
per-example clipping (``per_example_clipping``); the noise comes from the OS-seeded generator.
``keras-optimizer``: steps 1-2 are TF-Privacy's ``VectorizedDPKerasSGDOptimizer`` /
``VectorizedDPKerasAdamOptimizer`` on a reduction-NONE loss, exactly as its documentation
compiles a model; the optimizer divides by the rows it saw, ``m``, so step 3 multiplies its
result by ``m / (q n)``. An empty sample is fed as one masked row (zero loss, zero gradient) so
the optimizer still adds its noise. Its noise is TF's ``tf.random.normal``, seeded per process
by TF unless a global seed was set, so a set global seed is refused (rule: noise is never
seeded). Its per-row microbatching and gradient accumulation are not offered: microbatches
clip groups (an added example can shift two groups) and accumulation adds noise per call.
"""

from __future__ import annotations

from typing import Literal, Protocol

import tensorflow as tf
from tensorflow.python.framework import random_seed
from tensorflow_privacy.privacy.optimizers.dp_optimizer_keras_vectorized import (
    VectorizedDPKerasAdamOptimizer,
    VectorizedDPKerasSGDOptimizer,
)

from client.training.per_example_clipping import (
    ClippedGradientSum,
    correct_count,
    per_example_loss,
)
from shared.errors import ConfigError
from shared.privacy_accounting import DpSchedule
from shared.protocol import DP_ENGINES

OptimizerName = Literal["sgd", "adam"]


class Engine(Protocol):
    """One DP-SGD step on a gathered Poisson sample; returns (loss sum, correct count)."""

    name: str

    @property
    def iterations(self) -> tf.Variable: ...

    def step(self, x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]: ...


class ExpectedBatchUpdate:
    """Steps 3-5: scale by the expected batch, add the proximal gradient, apply."""

    def __init__(self, model: tf.keras.Model, expected_batch: float, proximal_mu: float,
                 optimizer: tf.keras.optimizers.Optimizer) -> None:
        self.variables = model.trainable_variables
        self.anchors = [tf.constant(v.numpy()) for v in self.variables]  # w_global, frozen now
        self.expected_batch = float(expected_batch)
        self.mu = float(proximal_mu)
        self.optimizer = optimizer

    def apply(self, noisy_sums: list[tf.Tensor]) -> None:
        grads = [g / self.expected_batch for g in noisy_sums]
        if self.mu > 0:
            grads = [g + self.mu * (v - a) for g, v, a in zip(grads, self.variables, self.anchors)]
        self.optimizer.apply_gradients(zip(grads, self.variables))


class DpModelEngine:
    """Fused ghost-norm (or vectorised) clipping, OS-seeded noise, a plain Keras optimizer."""

    name = "dp-model"

    def __init__(self, model: tf.keras.Model, schedule: DpSchedule, n: int, *, learning_rate: float,
                 proximal_mu: float, optimizer: OptimizerName, noise: tf.random.Generator) -> None:
        self.clipped_sum = ClippedGradientSum(model, schedule.l2_norm_clip)
        self.noise_std = schedule.noise_multiplier * schedule.l2_norm_clip
        self.noise = noise
        keras_optimizer = _plain_optimizer(optimizer, learning_rate)
        keras_optimizer.build(model.trainable_variables)  # variables exist before any graph loop
        self.update = ExpectedBatchUpdate(model, schedule.sampling_rate * n, proximal_mu, keras_optimizer)

    @property
    def iterations(self) -> tf.Variable:
        return self.update.optimizer.iterations

    def step(self, x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        sums, loss_sum, correct = self.clipped_sum(x, y)
        if self.noise_std > 0:
            sums = [g + self.noise.normal(tf.shape(g), stddev=self.noise_std) for g in sums]
        self.update.apply(sums)
        return loss_sum, correct


class KerasOptimizerEngine:
    """TF-Privacy's vectorised DP-Keras optimizer on a clone of the model (same variables)."""

    name = "keras-optimizer"

    def __init__(self, model: tf.keras.Model, schedule: DpSchedule, n: int, *, learning_rate: float,
                 proximal_mu: float, optimizer: OptimizerName) -> None:
        refuse_unkept_rules("keras-optimizer")
        dp_class = VectorizedDPKerasAdamOptimizer if optimizer == "adam" else VectorizedDPKerasSGDOptimizer
        self.trainer = tf.keras.Model(model.inputs, model.outputs, name=f"{model.name}_dp_keras")
        self.trainer.compile(
            optimizer=dp_class(l2_norm_clip=schedule.l2_norm_clip, noise_multiplier=schedule.noise_multiplier,
                               num_microbatches=None, learning_rate=learning_rate),
            loss=tf.keras.losses.SparseCategoricalCrossentropy(reduction=tf.keras.losses.Reduction.NONE),
        )
        # Slots exist before any graph loop (legacy optimizers have no public ``build``).
        self.trainer.optimizer._create_all_weights(model.trainable_variables)
        self.update = ExpectedBatchUpdate(model, schedule.sampling_rate * n, proximal_mu, self.trainer.optimizer)

    @property
    def iterations(self) -> tf.Variable:
        return self.trainer.optimizer.iterations

    def step(self, x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        x, y, mask = _at_least_one_row(x, y)
        variables = self.update.variables
        tape = tf.GradientTape()
        with tape:
            probabilities = self.trainer(x, training=True)
            losses = self.trainer.loss(y, probabilities) * mask
        # The optimizer's documented DP gradient (clip per row, sum, noise, / rows); the protected
        # name is what its own ``minimize`` calls, and the only way to rescale before applying.
        grads_and_vars = self.trainer.optimizer._compute_gradients(losses, variables, tape=tape)
        rows = tf.cast(tf.shape(y)[0], tf.float32)
        self.update.apply([g * rows for g, _ in grads_and_vars])  # (sum + noise) / rows * rows
        return tf.reduce_sum(per_example_loss(y, probabilities) * mask), correct_count(y, probabilities, mask)


def refuse_unkept_rules(engine: str) -> None:
    """Refuse an engine that could not keep one of the privacy rules in this process, naming it."""
    if engine not in DP_ENGINES:
        raise ConfigError(f"unknown DP engine {engine!r}", hint=f"Choose one of {', '.join(DP_ENGINES)}.")
    if engine == "keras-optimizer" and random_seed.get_seed(None)[0] is not None:
        raise ConfigError(
            "the keras-optimizer engine cannot keep the rule 'noise is never seeded': a global "
            "TensorFlow seed is set in this process, and TF-Privacy's optimizer draws its noise "
            "from tf.random.normal",
            hint="Do not call tf.random.set_seed in a training process, or use the dp-model engine.",
        )


def make_engine(name: str, model: tf.keras.Model, schedule: DpSchedule, n: int, *, learning_rate: float,
                proximal_mu: float, optimizer: OptimizerName, noise: tf.random.Generator) -> Engine:
    refuse_unkept_rules(name)
    if optimizer not in ("sgd", "adam"):
        raise ConfigError(f"optimizer must be 'sgd' or 'adam' (got {optimizer!r})")
    if name == "keras-optimizer":
        return KerasOptimizerEngine(model, schedule, n, learning_rate=learning_rate,
                                    proximal_mu=proximal_mu, optimizer=optimizer)
    return DpModelEngine(model, schedule, n, learning_rate=learning_rate, proximal_mu=proximal_mu,
                         optimizer=optimizer, noise=noise)


def _plain_optimizer(name: OptimizerName, learning_rate: float) -> tf.keras.optimizers.Optimizer:
    if name == "adam":
        return tf.keras.optimizers.Adam(learning_rate)
    return tf.keras.optimizers.SGD(learning_rate)


def _at_least_one_row(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """The batch, plus one all-zero masked row when it is empty (weights: 1 real, 0 padding)."""
    pad = tf.maximum(1 - tf.shape(y)[0], 0)
    x = tf.concat([x, tf.zeros(tf.concat([[pad], tf.shape(x)[1:]], 0), x.dtype)], 0)
    y = tf.concat([y, tf.zeros([pad], y.dtype)], 0)
    mask = tf.concat([tf.ones([tf.shape(y)[0] - pad]), tf.zeros([pad])], 0)
    return x, y, mask
