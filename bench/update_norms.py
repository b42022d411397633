"""How far one honest head-only DP round moves the weights, against the sessions' update-norm bound.

A session drops a site's update whose L2 distance from the round's global weights exceeds its
bound (and fails a round whose combined update does), so the bound must sit above what honest
sites send and as far below "anything" as that allows. By default each site's bound follows from
the schedule the server approved for it (``server.sessions.update_bound``), and this measures it. This runs exactly what a
site runs in one round at the approval defaults (``ApprovalOptions``, ``shared.training_defaults``;
the client's request defaults: clip 1, target epsilon 1 at delta 1e-5 over 3 rounds, noise calibrated by the server's PLD planner; the default DP engine) on the
2048->256->4 head, for several training-set sizes and local epochs, from the same start each
time, and prints the norm of ``w_new - w_global``: median (min-max) over ``--repeats`` runs.

Features are synthetic (4 classes, a class-dependent mean on 64 of the 2048 features, so the
clipped gradients agree from step to step, the case that moves weights furthest); with 525k
head weights the Gaussian noise dominates the norm anyway: its expected size is
``lr * sigma * clip * sqrt(steps * d) / (q n)`` (printed beside each figure).

    python -m bench.update_norms --repeats 3

The last line is the smallest ratio of a case's bound to its largest honest norm (above 1: no
honest update measured was dropped).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from shared.logging_setup import quiet_script  # noqa: E402

quiet_script(__file__)  # before TensorFlow: its start-up lines go to the log file, not here
from client.training.dp_training import LocalSettings, train_dp  # noqa: E402
from client.training.examples import TrainingExamples  # noqa: E402
from server.sessions.manager import ApprovalOptions  # noqa: E402
from server.sessions.update_bound import honest_update_bound  # noqa: E402
from shared.classifier import FEATURE_DIM, build_head, get_trainable_weights, set_trainable_weights  # noqa: E402
from shared import training_defaults  # noqa: E402
from shared.privacy_accounting import DpSchedule, calibrate_noise  # noqa: E402

DEFAULTS = ApprovalOptions()
#: The client's request defaults (``fl-client request``): clip, target epsilon, rounds; the site budget's delta.
CLIP, TARGET_EPSILON, ROUNDS, DELTA = training_defaults.L2_NORM_CLIP, 1.0, training_defaults.ROUNDS, 1e-5


def schedule_for(examples: int, epochs: int) -> DpSchedule:
    """What the server plans for a site with ``examples`` images at the defaults (``privacy_plan``)."""
    def for_noise(noise: float) -> DpSchedule:
        return DpSchedule.for_epochs(noise_multiplier=noise, l2_norm_clip=CLIP, examples=examples,
                                     batch_size=DEFAULTS.batch_size, epochs=epochs)

    return for_noise(calibrate_noise(TARGET_EPSILON, DELTA, lambda s: for_noise(s).session_event(ROUNDS)))


def synthetic_features(examples: int, rng: np.random.Generator) -> TrainingExamples:
    labels = rng.integers(0, 4, examples).astype(np.int32)
    features = np.maximum(rng.standard_normal((examples, FEATURE_DIM)), 0).astype(np.float32)
    features[np.arange(examples)[:, None], labels[:, None] * 16 + np.arange(16)] += 2.0
    return TrainingExamples.from_arrays(features, labels)


def update_norm(model, start: list[np.ndarray], examples: TrainingExamples, schedule: DpSchedule) -> float:  # type: ignore[no-untyped-def]
    set_trainable_weights(model, start)
    result = train_dp(model, examples, schedule,
                      LocalSettings(learning_rate=DEFAULTS.learning_rate, proximal_mu=DEFAULTS.proximal_mu))
    return math.sqrt(sum(float(np.sum((new.astype(np.float64) - old) ** 2)) for new, old in zip(result.weights, start)))


def expected_noise_norm(schedule: DpSchedule, size: int, examples: int) -> float:
    """E|noise| of a round: per step lr * sigma * clip / (q n) per coordinate, over ``steps`` steps."""
    expected_batch = schedule.sampling_rate * examples
    per_coordinate = DEFAULTS.learning_rate * schedule.noise_multiplier * schedule.l2_norm_clip / expected_batch
    return per_coordinate * math.sqrt(schedule.steps * size)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.update_norms", description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, nargs="+", default=[20, 125, 1000, 5000])
    parser.add_argument("--epochs", type=int, nargs="+", default=[1, training_defaults.LOCAL_EPOCHS])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    model = build_head(seed=0)
    start = [w.astype(np.float64) for w in get_trainable_weights(model)]
    size = sum(w.size for w in start)
    cases = [(n, e, schedule_for(n, e), synthetic_features(n, rng)) for n in args.examples for e in args.epochs]
    norms: dict[tuple[int, int], list[float]] = {(n, e): [] for n, e, _, _ in cases}
    for _ in range(args.repeats):  # interleaved, so load on this shared machine hits every case alike
        for n, e, schedule, examples in cases:
            norms[(n, e)].append(update_norm(model, [w.astype(np.float32) for w in start], examples, schedule))

    print(f"head: {size} trainable weights; batch {DEFAULTS.batch_size}, lr {DEFAULTS.learning_rate}, "
          f"mu {DEFAULTS.proximal_mu}, clip {CLIP}, target epsilon {TARGET_EPSILON} over {ROUNDS} rounds")
    print(f"{'images':>7} {'epochs':>6} {'sigma':>6} {'steps':>6} {'noise E|.|':>10} {'bound':>7}  "
          "honest update norm, median (min-max)")
    margins = []
    for n, e, schedule, _ in cases:
        values = norms[(n, e)]
        bound = honest_update_bound(schedule, examples=n, learning_rate=DEFAULTS.learning_rate, trainable_values=size)
        margins.append(bound / max(values))
        print(f"{n:>7} {e:>6} {schedule.noise_multiplier:>6.3f} {schedule.steps:>6} "
              f"{expected_noise_norm(schedule, size, n):>10.2f} {bound:>7.1f}  {statistics.median(values):.2f} "
              f"({min(values):.2f}-{max(values):.2f})   bound / largest {margins[-1]:.2f}")
    print(f"update_norm_bound_margin {min(margins):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
