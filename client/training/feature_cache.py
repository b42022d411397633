"""Backbone features computed once and reused, so head-only rounds never run ResNet50 again.

Valid only when the backbone is entirely frozen and images are not augmented (then a file's
features are a pure function of its bytes, the image size and the backbone weights). The key
hashes exactly those: every file's sha256 with its class, in the order the features are stored,
the image size and the backbone fingerprint; any change gives another key, i.e. a miss. Files
are ``.npz`` read with ``allow_pickle=False`` and written atomically.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import tensorflow as tf

from client.training.data import SiteData, image_dataset
from shared.classifier import backbone_fingerprint
from shared.dataset_layout import CLASS_NAMES
from shared.progress import report

FORMAT_VERSION = 1
_BATCH = 64


def feature_key(data: SiteData, image_size: int, fingerprint: str) -> str:
    """sha256 naming the features of ``data`` at ``image_size`` under backbone ``fingerprint``."""
    files = [
        [CLASS_NAMES[label], hashlib.sha256(path.read_bytes()).hexdigest()]
        for path, label in zip(data.paths, data.labels.tolist())
    ]
    text = json.dumps(
        {"v": FORMAT_VERSION, "size": image_size, "backbone": fingerprint, "files": files}
    )
    return hashlib.sha256(text.encode()).hexdigest()


def cached_features(
    cache_dir: Path, data: SiteData, image_size: int, features_model: tf.keras.Model
) -> np.ndarray:
    """The ``(n, 2048)`` backbone features of every image of ``data``, from disk when possible."""
    key = feature_key(data, image_size, backbone_fingerprint(features_model))
    path = Path(cache_dir) / f"features-{key}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as stored:
            if str(stored["key"]) == key and len(stored["features"]) == len(data.paths):
                return stored["features"]
    features = compute_features(features_model, data)
    _write_atomic(path, features=features, key=np.array(key))
    return features


def compute_features(features_model: tf.keras.Model, data: SiteData) -> np.ndarray:
    """Run the backbone over every image of ``data`` (inference mode)."""
    every = np.arange(len(data.paths))
    images = image_dataset(data, every).map(lambda x, y: x).batch(_BATCH)
    batches = math.ceil(len(every) / _BATCH)
    shown = tf.keras.callbacks.LambdaCallback(  # a display, when one is open, shows each batch
        on_predict_batch_end=lambda batch, logs: report("backbone features", batch + 1, batches, "batches"))
    return features_model.predict(images, verbose=0, callbacks=[shown]).astype(np.float32)


def _write_atomic(path: Path, **arrays: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            np.savez(out, **arrays)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
