"""Turn a downloaded version (trainable weights, .npz) into a complete Keras model file."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from shared.weights_io import load_weights_verified


def rebuild_classifier(
    weights_path: Path, sha256: str, spec: dict[str, Any], *, backbone_weights: Path | None = None
) -> Any:
    """The classifier of ``spec`` with the verified trainable weights of a downloaded version.

    Only trainable weights travel, so the frozen backbone is rebuilt locally from the same seed
    (or weights file) as the session's; a fingerprint mismatch is refused.
    """
    from shared.classifier import (
        backbone_fingerprint,
        build_classifier,
        set_trainable_weights,
    )
    from shared.errors import IntegrityError

    weights = load_weights_verified(weights_path, sha256)
    classifier = build_classifier(
        int(spec.get("image_size", 224)),
        trainable_blocks=int(spec.get("trainable_blocks", 0)),
        weights=backbone_weights,
        seed=int(spec.get("seed", 0)),
    )
    expected = spec.get("backbone_fingerprint")
    if expected and backbone_fingerprint(classifier.full) != expected:
        raise IntegrityError(
            "the rebuilt ResNet50 backbone does not match the version's model spec",
            hint="Use the same backbone weights file (or none) as the server.",
        )
    set_trainable_weights(classifier.full, weights)
    return classifier


def save_global_model(
    weights_path: Path,
    sha256: str,
    spec: dict[str, Any],
    h5_path: Path,
    *,
    backbone_weights: Path | None = None,
) -> Path:
    """Rebuild the version's classifier (see ``rebuild_classifier``) and save it as ``h5_path``."""
    classifier = rebuild_classifier(weights_path, sha256, spec, backbone_weights=backbone_weights)
    h5_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = h5_path.with_name(f".{h5_path.name}.part")
    with warnings.catch_warnings():  # .h5 is the format hospitals asked for, legacy or not
        warnings.filterwarnings("ignore", message=".*HDF5 file.*legacy", category=UserWarning)
        classifier.full.save(tmp, save_format="h5")
    tmp.replace(h5_path)
    return h5_path
