"""Head-only DP training on the sample data: random frozen backbone vs a pretrained weights file.

One site's sample data (the hospitals' generator and seed), its backbone features computed once
per backbone, then the client's own ``train_dp`` (Poisson-sampled DP-SGD on a ``DpSchedule`` whose
noise the PLD calibration picks so that the schedule that runs spends each target epsilon) on the
training split and accuracy on the validation split. DP noise is not seeded, so each cell is the
mean (and spread) of ``--repeats`` runs. "no DP" is noise 0 with the same clipping.

    python -m bench.pretrained_backbone_dp --backbone data/backbone/resnet50-synthetic-32.h5
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from shared.logging_setup import quiet_script  # noqa: E402

quiet_script(__file__)  # before TensorFlow: its start-up lines go to the log file, not here

from client.training.data import load_site_data  # noqa: E402
from client.training.dp_training import LocalSettings, train_dp  # noqa: E402
from client.training.examples import TrainingExamples  # noqa: E402
from client.training.feature_cache import compute_features  # noqa: E402
from scripts.make_sample_data import generate_sample_dataset  # noqa: E402
from shared.classifier import (  # noqa: E402
    build_classifier,
    get_trainable_weights,
    set_trainable_weights,
)
from shared.privacy_accounting import DpSchedule, calibrate_noise  # noqa: E402

DELTA = 1e-5


def _levels(text: str) -> list[float | None]:
    return [None if part.strip().lower() == "none" else float(part) for part in text.split(",")]


def _schedule(epsilon: float | None, n: int, args: argparse.Namespace) -> DpSchedule:
    """The run on ``n`` examples; for a target epsilon, the noise PLD calibration gives that very run."""

    def plan(noise: float) -> DpSchedule:
        return DpSchedule.for_epochs(noise_multiplier=noise, l2_norm_clip=args.clip, examples=n,
                                     batch_size=args.batch_size, epochs=args.epochs)

    return plan(0.0 if epsilon is None else calibrate_noise(epsilon, DELTA, lambda noise: plan(noise).event()))


def _accuracies(
    weights: Path | None, root: Path, args: argparse.Namespace
) -> dict[float | None, list[float]]:
    """Validation accuracy of ``--repeats`` DP head runs per level, on this backbone's features."""
    data = load_site_data(root, image_size=args.size, seed=0)
    classifier = build_classifier(args.size, weights=weights, seed=0)
    features = compute_features(classifier.features, data)
    x, y = features[data.train_index], data.labels[data.train_index]
    x_val, y_val = features[data.val_index], data.labels[data.val_index]
    initial = get_trainable_weights(classifier.head)
    examples = TrainingExamples.from_arrays(x, y)
    results: dict[float | None, list[float]] = {}
    for epsilon in args.levels:
        schedule = _schedule(epsilon, len(x), args)
        results[epsilon] = []
        for _ in range(args.repeats):
            set_trainable_weights(classifier.head, initial)
            train_dp(classifier.head, examples, schedule, LocalSettings(learning_rate=args.lr))
            predicted = np.argmax(classifier.head.predict(x_val, verbose=0), axis=1)
            results[epsilon].append(float(np.mean(predicted == y_val)))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", type=Path, required=True, help="pretrained weights (.h5)")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--per-class", type=int, default=150)
    parser.add_argument("--levels", type=_levels, default=_levels("1,4,8,none"))
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.2)
    parser.add_argument("--clip", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "site"
        generate_sample_dataset(root, per_class=args.per_class, image_size=args.size, seed=0)
        table = {name: _accuracies(weights, root, args)
                 for name, weights in (("random", None), ("pretrained", args.backbone))}
    print(f"{args.per_class}/class at {args.size} px, epochs {args.epochs}, batch {args.batch_size},"
          f" lr {args.lr}, clip {args.clip}, delta {DELTA}, {args.repeats} runs per cell")
    print(f"{'epsilon':>10} {'random':>14} {'pretrained':>14}")
    for epsilon in args.levels:
        cells = [f"{np.mean(table[n][epsilon]):.3f} ± {np.std(table[n][epsilon]):.3f}"
                 for n in ("random", "pretrained")]
        print(f"{'no DP' if epsilon is None else epsilon:>10} {cells[0]:>14} {cells[1]:>14}")
    print(f"took {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
