"""Round time of head-only DP training on 500 images, with and without the feature cache; a site's memory.

Without the cache every local epoch runs ResNet50 over the images (DP training of the full
model with a frozen backbone); with it a round loads the cached features and trains the head
only. Also prints the one-off cost of filling the cache, and the site process's resident memory
during a head-only round and during a round that trains an unfrozen stage (``trainable_blocks
1``: conv5, per-example gradients vectorised in chunks). Ends with ``feature_cache_speedup R``
(round time without / with the cache).

    python bench/feature_cache.py --image-size 64 --epochs 1
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from shared.logging_setup import quiet_script

quiet_script(__file__)  # before TensorFlow: its start-up lines go to the log file, not here
import tensorflow as tf

from bench.peak_memory import peak_rss
from client.training.data import load_site_data
from client.training.dp_training import LocalSettings, train_dp
from client.training.examples import TrainingExamples
from client.training.feature_cache import cached_features
from scripts.make_sample_data import generate_sample_dataset
from shared.classifier import build_classifier
from shared.privacy_accounting import DpSchedule

SETTINGS = LocalSettings(learning_rate=0.1)


def _timed(action):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    result = action()
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=1, help="local epochs per round")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root, cache = Path(tmp) / "site", Path(tmp) / "cache"
        generate_sample_dataset(root, per_class=125, image_size=args.image_size, seed=0)
        data = load_site_data(root, image_size=args.image_size, val_fraction=0.0)
        classifier = build_classifier(args.image_size)
        images = TrainingExamples.from_images(data, data.train_index)
        schedule = DpSchedule.for_epochs(noise_multiplier=1.0, l2_norm_clip=1.0, examples=data.n_train,
                                         batch_size=args.batch_size, epochs=args.epochs)

        _, uncached = _timed(lambda: train_dp(classifier.full, images, schedule, SETTINGS))
        _, fill = _timed(lambda: cached_features(cache, data, args.image_size, classifier.features))

        def cached_round() -> None:
            features = cached_features(cache, data, args.image_size, classifier.features)
            train_dp(classifier.head, TrainingExamples.from_arrays(features, data.labels), schedule, SETTINGS)

        with peak_rss() as head_memory:
            _, cached = _timed(cached_round)
        unfrozen = build_classifier(args.image_size, trainable_blocks=1)
        with peak_rss() as unfrozen_memory:
            _, unfrozen_s = _timed(lambda: train_dp(unfrozen.full, images, schedule, SETTINGS))

    print(f"device: {'GPU' if tf.config.list_physical_devices('GPU') else 'CPU'}, "
          f"{data.n_train} images at {args.image_size}px, {args.epochs} local epoch(s)")
    print(f"round without cache (ResNet50 every epoch): {uncached:.2f} s")
    print(f"one-off cache fill (ResNet50 once):          {fill:.2f} s")
    print(f"round with warm cache (head only):           {cached:.2f} s")
    print(f"round training conv5 too (trainable_blocks 1): {unfrozen_s:.2f} s")
    print(f"site process memory, head-only round:          {head_memory.describe()}")
    print(f"site process memory, conv5 round:              {unfrozen_memory.describe()}")
    print(f"feature_cache_speedup {uncached / cached:.2f}")


if __name__ == "__main__":
    main()
