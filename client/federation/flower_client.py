"""The site's Flower ``NumPyClient``: receives global trainable weights, trains its approved DP schedule.

Round config keys read by ``fit`` (the server's FedProx strategy sends them): ``round``,
``session_id``, ``num_rounds``, ``batch_size``, ``learning_rate``, ``proximal_mu``, and this
site's own ``local_epochs``, ``examples`` (its approved, declared count) and ``dp_*`` schedule
(``shared.privacy_accounting.DpSchedule``). The schedule is checked against the site's request
(``client.training.privacy_contract.accepted_schedule``), charged to the site's ledger, then
trained; anything that does not match is refused before a step runs.

What leaves the site (see the README's privacy table): the DP-trained weights; as the example
count, the approved one (public by declaration or bucketed); and in the metrics only the round,
the backbone fingerprint and the admission proof (``extra_fit_metrics``). Training loss and
accuracy stay local (the ``progress`` callback), and ``evaluate`` refuses to send validation
metrics in the clear.

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
from client.training.per_example_clipping import correct_count, per_example_loss
from client.training.privacy_contract import RequestTerms, accepted_schedule
from shared.classifier import (
    Classifier,
    Weights,
    backbone_fingerprint,
    build_classifier,
    get_trainable_weights,
    set_trainable_weights,
)
from shared.errors import ConfigError, ProtocolError

#: Called after every local epoch with (round, epoch, loss, accuracy); the figures stay on the site.
ProgressCallback = Callable[[int, int, float, float], None]
#: Validation batch size (memory only: validation results leave the site only as masked sums).
_EVAL_BATCH = 64
#: Keys every round's fit config must carry (the schedule's ``dp_*`` keys are checked with it).
FIT_KEYS = ("session_id", "round", "num_rounds", "local_epochs", "batch_size", "learning_rate", "examples")


@dataclass
class LocalData:
    """What trains and on which examples: the head on features, or the full model on images."""

    model: tf.keras.Model
    train: TrainingExamples  # held whole: Poisson sampling gathers from it
    val: tf.data.Dataset  # unbatched (x, y)
    n_train: int
    n_val: int


class FLClient(NumPyClient):
    """One site in one session: the approved DP-SGD schedule + FedProx, every run charged to the ledger.

    ``terms`` is what the site asked for in the request the session was approved from; ``dp``
    gives the optimizer (clip and noise come from the accepted schedule).
    """

    def __init__(
        self,
        local: LocalData,
        *,
        dp: DPConfig,
        ledger: PrivacyLedger,
        fingerprint: str,
        terms: RequestTerms,
        extra_fit_metrics: Mapping[str, str | int | float] | None = None,
        progress: ProgressCallback | None = None,
    ) -> None:
        self.local = local
        self.dp = dp
        self.ledger = ledger
        self.fingerprint = fingerprint
        self.terms = terms
        self.extra_fit_metrics = dict(extra_fit_metrics or {})
        self.progress = progress

    def get_properties(self, config: dict[str, Scalar]) -> dict[str, Scalar]:
        """Proof of admission (``extra_fit_metrics``: site, session secret) and the backbone in use."""
        return {"backbone_fingerprint": self.fingerprint, **self.extra_fit_metrics}

    def get_parameters(self, config: dict[str, Scalar]) -> list[np.ndarray]:
        return get_trainable_weights(self.local.model)

    def fit(
        self, parameters: list[np.ndarray], config: dict[str, Scalar]
    ) -> tuple[list[np.ndarray], int, dict[str, Scalar]]:
        """One round: accept and charge the schedule, then DP-train it from the global weights."""
        for key in FIT_KEYS:
            _required(config, key)
        schedule = accepted_schedule(config, self.terms)  # raises before anything is charged
        session_id, round_number = str(config["session_id"]), int(config["round"])
        settings = LocalSettings(learning_rate=float(config["learning_rate"]),
                                 proximal_mu=float(config.get("proximal_mu", 0.0)),
                                 optimizer=self.dp.optimizer, engine=self.dp.engine)
        set_trainable_weights(self.local.model, parameters)  # checks shapes before charging
        self.ledger.charge(session_id, schedule.event())  # raises PrivacyBudgetExceeded
        result = train_dp(self.local.model, self.local.train, schedule, settings,
                          on_epoch=self._epoch_reporter(round_number))
        metrics: dict[str, Scalar] = {
            "round": round_number,
            "backbone_fingerprint": self.fingerprint,
            **self.extra_fit_metrics,
        }
        return result.weights, int(config["examples"]), metrics

    def evaluate(
        self, parameters: list[np.ndarray], config: dict[str, Scalar]
    ) -> tuple[float, int, dict[str, Scalar]]:
        """Refused: validation metrics would leave the site in the clear, outside the accountant."""
        raise ProtocolError("this site does not send validation metrics in the clear",
                            hint="Evaluate an accepted version locally: fl-client evaluate vN.")

    def validate(self, parameters: list[np.ndarray]) -> tuple[float, int, dict[str, Scalar]]:
        """Loss, count and accuracy of ``parameters`` on the local validation split, with the proof of
        admission (``extra_fit_metrics``).

        Only for the secure-aggregation wrapper, which puts the count, correct predictions and loss
        sum inside the masked evaluate sum and lets nothing else but the proof leave the site.
        """
        if self.local.n_val == 0:
            return 0.0, 0, {"accuracy": 0.0, **self.extra_fit_metrics}
        set_trainable_weights(self.local.model, parameters)
        loss_sum, correct = 0.0, 0.0
        for x, y in self.local.val.batch(_EVAL_BATCH):
            probabilities = self.local.model(x, training=False)
            loss_sum += float(tf.reduce_sum(per_example_loss(y, probabilities)))
            correct += float(correct_count(tf.cast(y, tf.int64), probabilities))
        n = self.local.n_val
        return loss_sum / n, n, {"accuracy": correct / n, **self.extra_fit_metrics}

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
    terms: RequestTerms,
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
        terms=terms,
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
