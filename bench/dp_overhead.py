"""Head-only training throughput, DP vs non-DP: same 2048->256->4 head, same data, one run.

DP uses the client's own trainer (TF-Privacy DPModel, fast per-example norms for Dense layers);
non-DP is the same architecture with plain Keras fit. Both are timed after a warm-up epoch, so
tracing is excluded. Ends with ``dp_overhead_ratio R`` (DP time / non-DP time).

    python bench/dp_overhead.py --examples 8192 --batch-size 128 --epochs 3
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from shared.logging_setup import quiet_script  # noqa: E402

quiet_script(__file__)  # before TensorFlow: its start-up lines go to the log file, not here
import tensorflow as tf  # noqa: E402

from client.training.dp_training import DPConfig, LocalTraining, make_dp_trainer  # noqa: E402
from shared.classifier import build_head, get_trainable_weights, set_trainable_weights  # noqa: E402


def _throughput(model: tf.keras.Model, batches: tf.data.Dataset, examples: int, epochs: int) -> float:
    model.fit(batches, epochs=1, verbose=0)  # warm-up: tracing and first-touch allocation
    start = time.perf_counter()
    model.fit(batches, epochs=epochs, verbose=0)
    return examples * epochs / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=8192)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    features = rng.standard_normal((args.examples, 2048)).astype(np.float32)
    labels = rng.integers(0, 4, args.examples).astype(np.int32)
    batches = (
        tf.data.Dataset.from_tensor_slices((features, labels))
        .shuffle(args.examples).batch(args.batch_size).cache().prefetch(tf.data.AUTOTUNE)
    )
    local = LocalTraining(epochs=args.epochs, batch_size=args.batch_size, learning_rate=0.05)

    plain = build_head(seed=0)
    plain.compile(
        optimizer=tf.keras.optimizers.SGD(local.learning_rate),
        loss=tf.keras.losses.SparseCategoricalCrossentropy(),
        metrics=[tf.keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    private_head = build_head(seed=0)
    set_trainable_weights(private_head, get_trainable_weights(plain))
    private = make_dp_trainer(
        private_head, noise_multiplier=1.0, dp=DPConfig(noise_multiplier=1.0), local=local
    )
    assert private._enable_fast_peg_computation, "fast clipping path not taken"  # noqa: SLF001

    non_dp = _throughput(plain, batches, args.examples, args.epochs)
    dp = _throughput(private, batches, args.examples, args.epochs)
    print(f"device: {'GPU' if tf.config.list_physical_devices('GPU') else 'CPU'}, "
          f"batch {args.batch_size}, {args.examples} examples x {args.epochs} epochs")
    print(f"non-DP throughput: {non_dp:,.0f} samples/s")
    print(f"DP throughput:     {dp:,.0f} samples/s")
    print(f"dp_overhead_ratio {non_dp / dp:.2f}")


if __name__ == "__main__":
    main()
