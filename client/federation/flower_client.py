"""The site's Flower ``NumPyClient``: receives global trainable weights, trains with DP, reports.

Round config keys read by ``fit`` (the server's FedProx strategy sends them):
``round``, ``session_id``, ``local_epochs``, ``batch_size``, ``learning_rate``, ``proximal_mu``,
and ``num_rounds`` when the site gave a target epsilon (the noise is calibrated once per session
so that ``num_rounds * local_epochs`` epochs spend that epsilon; rounds must keep the batch size
and epochs of the first one).

Fit metrics: ``loss`` (mean training cross-entropy of the last local epoch), ``accuracy``,
``epsilon`` (this session so far, all its rounds composed, at the DP config's ``delta``),
``epsilon_total`` (the site's whole ledger), ``delta``, ``noise_multiplier``, ``l2_norm_clip``,
``steps``, ``dp_engine`` (which DP engine trained), ``round``, ``backbone_fingerprint``, plus the
``extra_fit_metrics`` given at construction. Training loss/accuracy and the validation metrics are not privatised: they are
aggregates the server sees in the clear, outside the DP guarantee.

Start it with ``flwr.client.start_client(server_address=..., client=client.to_client())``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf
from flwr.client import NumPyClient
from flwr.common import Scalar

from client.training.data import SiteData, image_dataset, load_site_data
from client.training.dp_training import DPConfig, LocalSettings, train_dp
from client.training.examples import TrainingExamples
from client.training.feature_cache import cached_features, compute_features
from client.training.ledger import PrivacyLedger
from shared.classifier import (
    Classifier,
    Weights,
    backbone_fingerprint,
    build_classifier,
    get_trainable_weights,
    set_trainable_weights,
)
from shared.errors import ConfigError
from shared.privacy_accounting import DpSchedule, noise_for_target_epsilon

#: Called after every local epoch with (round, epoch, loss, accuracy).
ProgressCallback = Callable[[int, int, float, float], None]
_EVAL_BATCH = 128


@dataclass
class LocalData:
    """What trains and on which examples: the head on features, or the full model on images."""

    model: tf.keras.Model
    train: TrainingExamples  # held whole: Poisson sampling gathers from it
    val: tf.data.Dataset  # unbatched (x, y)
    n_train: int
    n_val: int


class FLClient(NumPyClient):
    """One site in one session: DP-SGD + FedProx on local data, every run charged to the ledger."""

    def __init__(
        self,
        local: LocalData,
        *,
        dp: DPConfig,
        ledger: PrivacyLedger,
        fingerprint: str,
        extra_fit_metrics: Mapping[str, str | int | float] | None = None,
        progress: ProgressCallback | None = None,
    ) -> None:
        self.local = local
        self.dp = dp
        self.ledger = ledger
        self.fingerprint = fingerprint
        self.extra_fit_metrics = dict(extra_fit_metrics or {})
        self.progress = progress
        self._session_noise: dict[str, float] = {}
        local.model.compile(
            loss=tf.keras.losses.SparseCategoricalCrossentropy(),
            metrics=[tf.keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        )

    def get_properties(self, config: dict[str, Scalar]) -> dict[str, Scalar]:
        """Proof of admission (``extra_fit_metrics``: site, session secret) and the backbone in use."""
        return {"backbone_fingerprint": self.fingerprint, "n_train": self.local.n_train,
                **self.extra_fit_metrics}

    def get_parameters(self, config: dict[str, Scalar]) -> list[np.ndarray]:
        return get_trainable_weights(self.local.model)

    def fit(
        self, parameters: list[np.ndarray], config: dict[str, Scalar]
    ) -> tuple[list[np.ndarray], int, dict[str, Scalar]]:
        """One round: check and charge the privacy budget, then DP-train from the global weights."""
        session_id = str(_required(config, "session_id"))
        round_number = int(_required(config, "round"))
        epochs, batch_size = int(_required(config, "local_epochs")), int(_required(config, "batch_size"))
        noise = self._noise(session_id, batch_size, epochs, config)
        schedule = DpSchedule.for_epochs(noise_multiplier=noise, l2_norm_clip=self.dp.l2_norm_clip,
                                         examples=self.local.n_train, batch_size=batch_size, epochs=epochs)
        settings = LocalSettings(learning_rate=float(_required(config, "learning_rate")),
                                 proximal_mu=float(config.get("proximal_mu", 0.0)),
                                 optimizer=self.dp.optimizer, engine=self.dp.engine)
        set_trainable_weights(self.local.model, parameters)  # checks shapes before charging
        total = self.ledger.charge(session_id, schedule.event())  # raises PrivacyBudgetExceeded
        result = train_dp(self.local.model, self.local.train, schedule, settings,
                          on_epoch=self._epoch_reporter(round_number))
        metrics: dict[str, Scalar] = {
            "loss": result.loss,
            "accuracy": result.accuracy,
            "epsilon": self.ledger.spent(self.dp.delta, session_id=session_id),
            "epsilon_total": total,
            "delta": self.dp.delta,
            "noise_multiplier": noise,
            "l2_norm_clip": self.dp.l2_norm_clip,
            "steps": result.steps,
            "dp_engine": result.engine,
            "round": round_number,
            "backbone_fingerprint": self.fingerprint,
            **self.extra_fit_metrics,
        }
        return result.weights, result.examples, metrics

    def evaluate(
        self, parameters: list[np.ndarray], config: dict[str, Scalar]
    ) -> tuple[float, int, dict[str, Scalar]]:
        """Loss and accuracy of ``parameters`` on the local validation split."""
        if self.local.n_val == 0:
            return 0.0, 0, dict(self.extra_fit_metrics)
        set_trainable_weights(self.local.model, parameters)
        loss, accuracy = self.local.model.evaluate(
            self.local.val.batch(_EVAL_BATCH), verbose=0
        )
        metrics = {"loss": float(loss), "accuracy": float(accuracy), **self.extra_fit_metrics}
        return float(loss), self.local.n_val, metrics

    def _noise(self, session_id: str, batch_size: int, epochs: int, config: dict[str, Scalar]) -> float:
        """The session's noise multiplier: given, or calibrated once to its target epsilon."""
        if self.dp.noise_multiplier is not None:
            return self.dp.noise_multiplier
        if session_id not in self._session_noise:
            rounds = int(_required(config, "num_rounds"))
            self._session_noise[session_id] = noise_for_target_epsilon(
                self.dp.target_epsilon,
                self.dp.delta,
                self.local.n_train,
                batch_size,
                rounds * epochs,
            )
        return self._session_noise[session_id]

    def _epoch_reporter(self, round_number: int) -> Callable[[int, float, float], None] | None:
        if self.progress is None:
            return None
        progress = self.progress
        return lambda epoch, loss, accuracy: progress(round_number, epoch, loss, accuracy)


def _required(config: Mapping[str, Scalar], key: str) -> Scalar:
    if key not in config:
        raise ConfigError(f"round config lacks {key!r}", hint="The server's strategy must send it.")
    return config[key]


def build_site_client(
    data_root: Path,
    *,
    image_size: int,
    dp: DPConfig,
    ledger: PrivacyLedger,
    trainable_blocks: int = 0,
    weights: Weights = None,
    cache_dir: Path | None = None,
    augment: bool = False,
    val_fraction: float = 0.2,
    seed: int = 0,
    extra_fit_metrics: Mapping[str, str | int | float] | None = None,
    progress: ProgressCallback | None = None,
) -> FLClient:
    """Load the site's data, build the model and return a ready ``FLClient``.

    Head-only training without augmentation trains on backbone features (from ``cache_dir`` when
    given, so later sessions skip ResNet50); otherwise the full model trains on images.
    ``seed`` fixes the frozen backbone (must match the server's) and the train/val split.
    """
    data = load_site_data(data_root, image_size=image_size, val_fraction=val_fraction, seed=seed)
    classifier = build_classifier(
        image_size, trainable_blocks=trainable_blocks, weights=weights, seed=seed
    )
    local = _local_data(data, classifier, image_size, augment=augment, cache_dir=cache_dir)
    return FLClient(
        local,
        dp=dp,
        ledger=ledger,
        fingerprint=backbone_fingerprint(classifier.full),
        extra_fit_metrics=extra_fit_metrics,
        progress=progress,
    )


def _local_data(
    data: SiteData,
    classifier: Classifier,
    image_size: int,
    *,
    augment: bool,
    cache_dir: Path | None,
) -> LocalData:
    if classifier.trainable_blocks > 0 or augment:
        return LocalData(
            model=classifier.full,
            train=TrainingExamples.from_images(data, data.train_index, augment=augment),
            val=image_dataset(data, data.val_index),
            n_train=data.n_train,
            n_val=data.n_val,
        )
    if cache_dir is None:
        features = compute_features(classifier.features, data)
    else:
        features = cached_features(cache_dir, data, image_size, classifier.features)

    def split(index: np.ndarray) -> tf.data.Dataset:
        return tf.data.Dataset.from_tensor_slices((features[index], data.labels[index]))

    return LocalData(
        model=classifier.head,
        train=TrainingExamples.from_arrays(features[data.train_index], data.labels[data.train_index]),
        val=split(data.val_index),
        n_train=data.n_train,
        n_val=data.n_val,
    )
