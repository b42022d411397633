"""How well a downloaded model version does on this site's own images.

The classifier is rebuilt from the version's model spec with its sha256-verified trainable
weights (``model_files.rebuild_classifier``, as for the saved .h5), and every decodable local
image is predicted: accuracy and a confusion matrix (rows true class, columns predicted class).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shared.dataset_layout import CLASS_NAMES

EVAL_BATCH = 64


@dataclass(frozen=True)
class Evaluation:
    version: int
    examples: int
    accuracy: float
    confusion: list[list[int]]  # [true][predicted], in CLASS_NAMES order
    skipped: int

    def recall(self, class_index: int) -> float | None:
        row = self.confusion[class_index]
        return row[class_index] / sum(row) if sum(row) else None


def evaluate_weights(
    version: int, weights_path: Path, sha256: str, spec: dict[str, Any], data_root: Path,
    *, backbone_weights: Path | None = None,
) -> Evaluation:
    """Predict every local image with the version's weights and count hits per class."""
    from client.training.data import image_dataset, load_site_data
    from client.training.model_files import rebuild_classifier

    classifier = rebuild_classifier(weights_path, sha256, spec, backbone_weights=backbone_weights)
    data = load_site_data(data_root, image_size=int(spec.get("image_size", 224)), val_fraction=0.0)
    everything = np.arange(len(data.labels))
    images = image_dataset(data, everything).map(lambda x, y: x).batch(EVAL_BATCH)
    predicted = np.argmax(classifier.full.predict(images, verbose=0), axis=1)
    confusion = np.zeros((len(CLASS_NAMES), len(CLASS_NAMES)), dtype=int)
    np.add.at(confusion, (data.labels, predicted), 1)
    return Evaluation(version, len(data.labels), float(np.mean(predicted == data.labels)),
                      confusion.tolist(), len(data.skipped))
