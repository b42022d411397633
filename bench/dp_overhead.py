"""Head-only training throughput, DP (both engines) vs non-DP, at the sessions' default batch and 128.

Same 2048->256->4 head, same random features, one process. Arms:

- ``plain-fit``: Keras ``fit`` on shuffled fixed-size batches (how main trained without DP);
- ``plain-loop``: the DP trainer's own Poisson loop with a plain mean gradient (no clip, no noise);
- ``dp-model``: the default DP engine (fused ghost-norm clipping, noise, Poisson sampling);
- ``dp-model-no-noise``: the same with noise multiplier 0, i.e. what everything but the noise costs;
- ``noise-draw-only``: the sampling and the Gaussian noise draw of a step alone (no model): the
  ceiling on any DP-SGD step's throughput here, since every step noises all 526k head weights;
- ``dp-model-prefetch``: the default engine with its noise drawn off the critical path, by a
  ``tf.data`` producer (own OS-seeded generator, a fresh draw for every step, used once) that
  keeps the next steps' noise ready on its own threads while a step computes: what a second
  core can hide (tried for issue 16; not used by the engine, since it did not help here);
- ``keras-optimizer``: TF-Privacy's vectorised DP-Keras SGD optimizer engine (slow; fewer steps);
- ``dpmodel-fit (before)``: what main trained with before Poisson sampling, TF-Privacy's ``DPModel``
  under Keras ``fit`` on shuffled fixed-size batches (noise divided by the realised batch).

Each arm is built and traced once, then the arms run in turn, ``--repeats`` times interleaved, so
load on this shared machine hits all of them alike; each figure is the median (min-max) of those
repetitions. A ratio is the plain arm's throughput over the DP arm's, per repetition; "vs best
plain" divides by the faster plain arm of that repetition. The last line is the default engine's
ratio against the best plain arm at the default batch size:

    python -m bench.dp_overhead --examples 8192 --steps 300 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from shared.logging_setup import quiet_script

quiet_script(__file__)  # before TensorFlow: its start-up lines go to the log file, not here
import tensorflow as tf
from tensorflow_privacy.privacy.fast_gradient_clipping.layer_registry import (
    make_default_layer_registry,
)
from tensorflow_privacy.privacy.keras_models.dp_keras_model import DPModel

from client.training.dp_engines import DpModelEngine, ExpectedBatchUpdate, make_engine
from client.training.dp_training import sampled_step_loop
from client.training.examples import TrainingExamples
from client.training.per_example_clipping import correct_count, per_example_loss
from client.training.poisson_sampling import os_seeded_generator
from server.sessions.manager import ApprovalOptions
from shared.classifier import build_head
from shared.privacy_accounting import DpSchedule

DEFAULTS = ApprovalOptions()
#: The optimizer engine is ~30-100x slower; it runs this fraction of the steps.
SLOW_FRACTION = 0.05
#: Steps of noise the prefetching arm keeps drawn ahead.
PREFETCHED_STEPS = 4
Arm = Callable[[int], None]


class _PlainEngine:
    """A non-DP step in the DP trainer's loop: mean gradient over the sample, same optimizer."""

    name = "plain-loop"

    def __init__(self, model: tf.keras.Model, expected_batch: float, learning_rate: float) -> None:
        optimizer = tf.keras.optimizers.SGD(learning_rate)
        optimizer.build(model.trainable_variables)
        self.model = model
        self.update = ExpectedBatchUpdate(model, expected_batch, 0.0, optimizer)

    @property
    def iterations(self) -> tf.Variable:
        return self.update.optimizer.iterations

    def step(self, x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        with tf.GradientTape() as tape:
            probabilities = self.model(x, training=True)
            total = tf.reduce_sum(per_example_loss(y, probabilities))
        self.update.apply(tape.gradient(total, self.model.trainable_variables))
        return total, correct_count(y, probabilities)


class _NoiseOnlyEngine:
    """Draws one step's noise for the head's trainable shapes and nothing else."""

    name = "noise-draw-only"

    def __init__(self, model: tf.keras.Model, generator: tf.random.Generator) -> None:
        self.shapes = [v.shape for v in model.trainable_variables]
        self.generator = generator

    def step(self, x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        drawn = tf.add_n([tf.reduce_sum(self.generator.normal(shape)[:1]) for shape in self.shapes])
        return drawn, tf.constant(0.0)  # used, so the draw cannot be pruned


class _PrefetchedNoiseEngine(DpModelEngine):
    """``DpModelEngine`` whose step takes its noise from a prefetching ``tf.data`` producer."""

    name = "dp-model-prefetch"

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        generator, std = os_seeded_generator(), self.noise_std
        shapes = [v.shape for v in self.update.variables]
        draws = tf.data.Dataset.from_tensors(0).repeat().map(
            lambda _: tuple(generator.normal(shape, stddev=std) for shape in shapes))
        self.noises = iter(draws.prefetch(PREFETCHED_STEPS))

    def step(self, x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        noise = next(self.noises)
        sums, loss_sum, correct = self.clipped_sum(x, y)
        self.update.apply([g + z for g, z in zip(sums, noise)])
        return loss_sum, correct


def _loop_arm(engine, examples: TrainingExamples, rate: float, generator: tf.random.Generator) -> Arm:  # type: ignore[no-untyped-def]
    run = sampled_step_loop(engine, examples, rate, generator)
    run(tf.constant(2))  # trace and first-touch allocation, untimed
    return lambda steps: run(tf.constant(steps))[0].numpy()


def _fit_arm(features: np.ndarray, labels: np.ndarray, batch: int, learning_rate: float, *,
             dp_model: bool = False) -> Arm:
    model = build_head(seed=0)
    if dp_model:
        model = DPModel(l2_norm_clip=1.0, noise_multiplier=1.0, use_xla=False,
                        layer_registry=make_default_layer_registry(), inputs=model.inputs, outputs=model.outputs)
    model.compile(optimizer=tf.keras.optimizers.SGD(learning_rate),
                  loss=tf.keras.losses.SparseCategoricalCrossentropy())
    batches = (tf.data.Dataset.from_tensor_slices((features, labels)).shuffle(len(labels))
               .batch(batch, drop_remainder=True).cache().repeat().prefetch(tf.data.AUTOTUNE))
    model.fit(batches, steps_per_epoch=2, epochs=1, verbose=0)
    return lambda steps: model.fit(batches, steps_per_epoch=steps, epochs=1, verbose=0)


def _arms(features: np.ndarray, labels: np.ndarray, batch: int, learning_rate: float) -> dict[str, Arm]:
    examples = TrainingExamples.from_arrays(features, labels)
    n = examples.size
    rate = batch / n
    arms = {"plain-fit": _fit_arm(features, labels, batch, learning_rate)}
    generator = os_seeded_generator()
    arms["plain-loop"] = _loop_arm(_PlainEngine(build_head(seed=0), rate * n, learning_rate), examples,
                                   rate, generator)
    for name, engine, noise in (("dp-model", "dp-model", 1.0), ("dp-model-no-noise", "dp-model", 0.0),
                                ("keras-optimizer", "keras-optimizer", 1.0)):
        schedule = DpSchedule(noise, rate, 1, 1.0)
        built = make_engine(engine, build_head(seed=0), schedule, n, learning_rate=learning_rate,
                            proximal_mu=0.0, optimizer="sgd", noise=generator)
        arms[name] = _loop_arm(built, examples, rate, generator)
        if name == "dp-model":
            prefetch = _PrefetchedNoiseEngine(build_head(seed=0), schedule, n, learning_rate=learning_rate,
                                              proximal_mu=0.0, optimizer="sgd", noise=generator)
            arms[prefetch.name] = _loop_arm(prefetch, examples, rate, generator)
    arms["dpmodel-fit (before)"] = _fit_arm(features, labels, batch, learning_rate, dp_model=True)
    arms["noise-draw-only"] = _loop_arm(_NoiseOnlyEngine(build_head(seed=0), generator), examples, rate,
                                        generator)
    return arms


def measure(features: np.ndarray, labels: np.ndarray, batch: int, steps: int, repeats: int,
            learning_rate: float) -> dict[str, list[float]]:
    """Examples per second of every arm, ``repeats`` interleaved repetitions each."""
    arms = _arms(features, labels, batch, learning_rate)
    throughput: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(repeats):
        for name, arm in arms.items():
            arm_steps = max(2, int(steps * SLOW_FRACTION)) if name == "keras-optimizer" else steps
            started = time.perf_counter()
            arm(arm_steps)
            throughput[name].append(arm_steps * batch / (time.perf_counter() - started))
    return throughput


def _spread(values: list[float], fmt: str) -> str:
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"


def report(batch: int, throughput: dict[str, list[float]]) -> float:
    """Print one batch size's table; return dp-model's median ratio against the best plain arm."""
    best_plain = [max(a, b) for a, b in zip(throughput["plain-fit"], throughput["plain-loop"])]
    print(f"\nbatch {batch} (expected Poisson batch), examples/s and slowdown, median (min-max):")
    print(f"  {'arm':18s} {'examples/s':>24s} {'vs plain-fit':>20s} {'vs best plain':>20s}")
    for name, values in throughput.items():
        vs_fit = [p / v for p, v in zip(throughput["plain-fit"], values)]
        vs_best = [p / v for p, v in zip(best_plain, values)]
        print(f"  {name:18s} {_spread(values, ',.0f'):>24s} {_spread(vs_fit, '.2f'):>20s} "
              f"{_spread(vs_best, '.2f'):>20s}")
    return statistics.median(p / v for p, v in zip(best_plain, throughput["dp-model"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=8192)
    parser.add_argument("--steps", type=int, default=300, help="steps per arm and repetition")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[DEFAULTS.batch_size, 128])
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    features = rng.standard_normal((args.examples, 2048)).astype(np.float32)
    labels = rng.integers(0, 4, args.examples).astype(np.int32)
    print(f"device: {'GPU' if tf.config.list_physical_devices('GPU') else 'CPU'}, {args.examples} examples, "
          f"{args.steps} steps per arm ({SLOW_FRACTION:.0%} for keras-optimizer), {args.repeats} repetitions, "
          f"sessions' default batch {DEFAULTS.batch_size}")
    ratios = {batch: report(batch, measure(features, labels, batch, args.steps, args.repeats,
                                           DEFAULTS.learning_rate))
              for batch in args.batch_sizes}
    print(f"dp_overhead_ratio {ratios[args.batch_sizes[0]]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
