"""Make the stand-in pretrained ResNet50 weights file (see ``client/training/backbone_pretraining.py``).

    python -m scripts.pretrain_backbone --out data/backbone/resnet50-synthetic-32.h5 --size 32

The file loads with ``fl-server init --weights PATH`` and ``fl-client setup --backbone-weights
PATH``; every site of a federation must use the same file (its sha256 is printed).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from shared.logging_setup import quiet_script

if __name__ == "__main__":  # before client.training loads TensorFlow: its start-up lines go to the log file
    quiet_script(__file__)

from client.training.backbone_pretraining import PretrainConfig, make_backbone_file  # noqa: E402
from shared.errors import FLError  # noqa: E402

_DEFAULTS = PretrainConfig()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pretrain_backbone",
        description="Pretrain ResNet50 on a public synthetic corpus and save its weights (.h5).",
    )
    parser.add_argument("--out", type=Path, required=True, help="weights file to write (.h5)")
    parser.add_argument("--size", type=int, default=_DEFAULTS.image_size, help="pixels per side")
    parser.add_argument("--per-class", type=int, default=_DEFAULTS.per_class,
                        help="public images per class")
    parser.add_argument("--epochs", type=int, default=_DEFAULTS.epochs)
    parser.add_argument("--batch-size", type=int, default=_DEFAULTS.batch_size)
    parser.add_argument("--learning-rate", type=float, default=_DEFAULTS.learning_rate)
    parser.add_argument("--train-stages", type=int, default=_DEFAULTS.train_stages,
                        help="ResNet stages trained, from the top (1 = conv5 ... 4 = conv2-5)")
    parser.add_argument("--all-blocks", action="store_true",
                        help="train every block of those stages (slow on CPU), not only the first")
    parser.add_argument("--seed", type=int, default=_DEFAULTS.seed, help="public corpus and init")
    parser.add_argument("--force", action="store_true", help="replace an existing --out file")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    import tensorflow as tf  # after argument parsing: --help stays fast

    tf.config.experimental.enable_op_determinism()  # same seed -> same weights on one machine
    try:
        config = PretrainConfig(
            image_size=args.size, per_class=args.per_class, epochs=args.epochs,
            batch_size=args.batch_size, learning_rate=args.learning_rate,
            train_stages=args.train_stages, seed=args.seed,
            blocks_per_stage=None if args.all_blocks else _DEFAULTS.blocks_per_stage,
        )
        report = make_backbone_file(args.out, config, force=args.force)
    except FLError as error:
        print(f"error: {error}\nhint: {error.hint}")  # stderr is the log file now
        return 2
    losses = " ".join(f"{loss:.3f}" for loss in report.epoch_losses)
    print(f"wrote {report.path} ({report.size_bytes} bytes)")
    print(f"sha256 {report.sha256}")
    print(f"public corpus: {report.train_examples} train / {report.val_examples} val images "
          f"at {args.size} px; loss per epoch {losses}")
    print(f"pretraining accuracy: train {report.train_accuracy:.3f}, val {report.val_accuracy:.3f}")
    print(f"took {report.seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
