"""Version v0: the freshly built classifier every federation starts from.

The server never trains, but it must hold the initial trainable weights and the model spec
(image size, trainable stages, backbone seed and fingerprint) that every site builds from, so
that all sites average weights of the same architecture over the same frozen backbone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from server.store import Store
from server.store.records import VersionInfo
from shared.errors import NotFoundError


def model_spec(version: VersionInfo) -> dict[str, Any]:
    """The model spec a version was built with (recorded with v0, carried by later versions)."""
    return dict(version.metadata.get("model", {}))


def ensure_initial_version(
    store: Store,
    *,
    image_size: int,
    trainable_blocks: int = 0,
    seed: int = 0,
    weights: Path | None = None,
) -> VersionInfo:
    """Create v0 from a new classifier unless the store already has one (then return it)."""
    try:
        return store.get_version(0)
    except NotFoundError:
        pass
    # TensorFlow is imported only here: a server that already has v0 starts without it.
    from shared.classifier import (
        backbone_fingerprint,
        build_classifier,
        get_trainable_weights,
    )

    classifier = build_classifier(
        image_size, trainable_blocks=trainable_blocks, weights=weights, seed=seed
    )
    spec = {
        "architecture": "resnet50+head",
        "image_size": image_size,
        "trainable_blocks": trainable_blocks,
        "seed": seed,
        "backbone_weights": str(weights) if weights else "none",
        "backbone_fingerprint": backbone_fingerprint(classifier.full),
    }
    return store.ensure_initial_version(
        get_trainable_weights(classifier.full), metadata={"model": spec}
    )
