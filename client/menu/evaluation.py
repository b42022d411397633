"""How well a model version does on a folder of scans: accuracy, confusion matrix, recall per class.

Two ways to the weights:

- an accepted version (``evaluate_weights``): the classifier is rebuilt from the version's model
  spec with its sha256-verified trainable weights (``model_files.rebuild_classifier``);
- a saved model file (``evaluate_model_file``), e.g. ``north_FinalGlobal_v3.h5`` handed to a
  hospital that has not set up a site: the classifier is built by our own code and only the
  file's weights are loaded into it. Keras' full-model loading is never used, because a model
  file's config can carry code (a ``Lambda`` layer) and the file comes from outside.

The folder is read as ``scan_dataset`` reads training data, but no class is required (17 slices
of two classes are a valid test set). Every file is decoded to grayscale at the model's input
size, so any mix of sizes, RGB or grayscale, JPEG or PNG works; files that are not images or do
not decode are counted with the reason. Nothing is written: a site's training data is only read.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from shared.dataset_layout import CLASS_NAMES, SkippedFile, scan_dataset
from shared.errors import DatasetError, IntegrityError
from shared.progress import report

if TYPE_CHECKING:
    from client.training.data import SiteData

EVAL_BATCH = 32


@dataclass(frozen=True)
class Evaluation:
    model: str  # "v3", or the model file's name
    examples: int
    accuracy: float
    confusion: list[list[int]]  # [true][predicted], in CLASS_NAMES order
    skipped: list[SkippedFile] = field(default_factory=list)
    data_root: Path | None = None

    def recall(self, class_index: int) -> float | None:
        row = self.confusion[class_index]
        return row[class_index] / sum(row) if sum(row) else None


def evaluate_weights(
    version: int, weights_path: Path, sha256: str, spec: dict[str, Any], data_root: Path,
    *, backbone_weights: Path | None = None,
) -> Evaluation:
    """An accepted (or stored) version's verified weights on every image under ``data_root``."""
    from client.training.model_files import rebuild_classifier

    data = read_labelled_images(data_root, int(spec.get("image_size", 224)))  # a bad folder fails fast
    classifier = rebuild_classifier(weights_path, sha256, spec, backbone_weights=backbone_weights)
    return _evaluate(f"v{version}", classifier.full, data, data_root)


def evaluate_model_file(model_file: Path, data_root: Path) -> Evaluation:
    """A saved classifier file (``<site>_FinalGlobal_vN.h5``) on every image under ``data_root``."""
    data = read_labelled_images(data_root, model_image_size(model_file))
    return _evaluate(model_file.name, load_model_file(model_file), data, data_root)


def model_image_size(model_file: Path) -> int:
    """The input size recorded in a Keras .h5 model file (its JSON config; nothing is executed)."""
    import h5py

    if not model_file.is_file():
        raise DatasetError(f"model file {model_file} does not exist",
                           hint="Pass a saved model such as north_FinalGlobal_v3.h5, or a version (v3) with --site.")
    try:
        with h5py.File(model_file, "r") as stored:
            config = json.loads(stored.attrs["model_config"])
        layers = config["config"]["layers"]
        shape = next(layer["config"]["batch_input_shape"] for layer in layers if layer["class_name"] == "InputLayer")
        return int(shape[1])
    except (OSError, KeyError, StopIteration, TypeError, ValueError, IndexError) as exc:
        raise IntegrityError(f"{model_file} is not a classifier model file ({type(exc).__name__}: {exc})",
                             hint="Use the .h5 file that fl-client accept saved (<site>_FinalGlobal_vN.h5).") from None


def load_model_file(model_file: Path) -> Any:
    """Our classifier, at the file's input size, with the file's weights (all of them)."""
    from shared.classifier import build_classifier

    classifier = build_classifier(model_image_size(model_file), trainable_blocks=0, seed=0)
    try:
        classifier.full.load_weights(model_file)
    except (ValueError, OSError, KeyError) as exc:
        raise IntegrityError(f"{model_file} does not hold this project's classifier ({exc})",
                             hint="Use the .h5 file that fl-client accept saved (<site>_FinalGlobal_vN.h5).") from None
    return classifier.full


def read_labelled_images(root: Path, image_size: int) -> SiteData:
    """Every decodable image under ``root/<class>/``, grayscale at ``image_size``, with its class,
    as the ``SiteData`` that training reads (all of it in ``train_index``)."""
    from client.training.data import SiteData, decode_image

    scan = scan_dataset(root, require_all_classes=False)
    files = [(label, path) for label, name in enumerate(CLASS_NAMES) for path in scan.images[name]]
    skipped = [SkippedFile(s.path, s.reason.replace(str(s.path), s.path.name)) for s in scan.skipped]
    images: list[np.ndarray] = []
    labels: list[int] = []
    paths: list[Path] = []
    for done, (label, path) in enumerate(files, start=1):
        try:
            images.append(decode_image(path, image_size))
            labels.append(label)
            paths.append(path)
        except (OSError, ValueError, SyntaxError) as exc:
            skipped.append(SkippedFile(path, f"cannot decode: {type(exc).__name__}: {exc}".replace(str(path), path.name)))
        report("reading images", done, len(files), "images")
    if not images:
        raise DatasetError(f"{root} holds no decodable images")
    every = np.arange(len(images))
    return SiteData(paths, np.stack(images), np.asarray(labels, np.int32), every, every[:0], skipped)


def _evaluate(model_name: str, model: Any, data: SiteData, root: Path) -> Evaluation:
    predicted = np.argmax(_predict(model, data), axis=1)
    confusion = np.zeros((len(CLASS_NAMES), len(CLASS_NAMES)), dtype=int)
    np.add.at(confusion, (data.labels, predicted), 1)
    return Evaluation(model_name, len(data.labels), float(np.mean(predicted == data.labels)), confusion.tolist(),
                      data.skipped, root)


def _predict(model: Any, data: SiteData) -> np.ndarray:
    """Class probabilities through training's own input pipeline, one batch at a time (reported)."""
    import tensorflow as tf

    from client.training.data import image_dataset

    batches = math.ceil(len(data.labels) / EVAL_BATCH)
    shown: Callable[[int, Any], None] = lambda batch, logs: report("classifying", batch + 1, batches, "batches")
    images = image_dataset(data, data.train_index).map(lambda x, y: x).batch(EVAL_BATCH)
    return model.predict(images, verbose=0, callbacks=[tf.keras.callbacks.LambdaCallback(on_predict_batch_end=shown)])
