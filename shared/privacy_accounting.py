"""Privacy accounting for DP-SGD runs: one DpEvent per run, epsilon via an RDP accountant.

Sampling assumption (read this before quoting an epsilon). A run is described as
``SelfComposed(PoissonSampled(q, Gaussian(noise_multiplier)), steps)`` with ``q = batch_size / n``
and ``steps = epochs * ceil(n / batch_size)``: each step is analysed as if every example had been
included independently with probability ``q`` (Poisson subsampling), which is the assumption that
TF-Privacy's ``compute_dp_sgd_privacy`` makes too. Training itself uses ``tf.data`` shuffling
into fixed-size batches, i.e. sampling without replacement per epoch, not Poisson sampling. The
reported epsilon is therefore the standard DP-SGD figure under the Poisson idealisation; it is
not a proven bound for shuffled batches (the two are known to differ, see Chua et al. 2024,
"How Private are DP-SGD Implementations?").
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import attr
import dp_accounting
from dp_accounting import dp_event
from dp_accounting.rdp import RdpAccountant

#: Relative tolerance of ``noise_for_target_epsilon``: the result spends [99%, 100%] of the target.
TARGET_TOLERANCE = 0.01
_MAX_NOISE = 1e4
_MIN_NOISE = 1e-3


def steps_for(n: int, batch_size: int, epochs: int) -> int:
    """Optimizer steps that ``epochs`` passes over ``n`` examples in batches of ``batch_size`` take."""
    return epochs * math.ceil(n / batch_size)


def sampling_probability(n: int, batch_size: int) -> float:
    """The Poisson sampling rate ``q`` that a batch of ``batch_size`` out of ``n`` is analysed as."""
    if n < 1 or batch_size < 1:
        raise ValueError(f"need n >= 1 and batch_size >= 1 (got n={n}, batch_size={batch_size})")
    return min(1.0, batch_size / n)


def poisson_gaussian_event(
    noise_multiplier: float, sampling_rate: float, steps: int
) -> dp_accounting.DpEvent:
    """``steps`` Gaussian steps, each on a Poisson sample drawn with probability ``sampling_rate``."""
    step = dp_accounting.PoissonSampledDpEvent(
        sampling_rate, dp_accounting.GaussianDpEvent(noise_multiplier)
    )
    return dp_accounting.SelfComposedDpEvent(step, steps)


@dataclass(frozen=True)
class DpSchedule:
    """One local DP-SGD run as the accountant sees it, fixed before training starts.

    Each of ``steps`` steps includes every example independently with probability
    ``sampling_rate`` (Poisson subsampling), clips each example's gradient to ``l2_norm_clip`` and
    adds Gaussian noise of standard deviation ``noise_multiplier * l2_norm_clip`` to the sum. The
    server decides it from the approved request and the site trains exactly it, so both ledgers
    count the same event.
    """

    noise_multiplier: float
    sampling_rate: float
    steps: int
    l2_norm_clip: float

    def __post_init__(self) -> None:
        if not (self.noise_multiplier >= 0 and 0 < self.sampling_rate <= 1 and self.steps >= 0
                and self.l2_norm_clip > 0):
            raise ValueError(f"not a DP-SGD schedule: {self}")

    @classmethod
    def for_epochs(
        cls, *, noise_multiplier: float, l2_norm_clip: float, examples: int, batch_size: int,
        epochs: int,
    ) -> DpSchedule:
        """``epochs`` expected passes over ``examples`` with expected batch ``batch_size``."""
        rate = sampling_probability(examples, batch_size)
        return cls(noise_multiplier, rate, math.ceil(epochs / rate), l2_norm_clip)

    def event(self) -> dp_accounting.DpEvent:
        return poisson_gaussian_event(self.noise_multiplier, self.sampling_rate, self.steps)


def dp_sgd_event(
    noise_multiplier: float, n: int, batch_size: int, epochs: int
) -> dp_accounting.DpEvent:
    """The DpEvent of ``epochs`` epochs of DP-SGD over ``n`` examples (Poisson assumption)."""
    return poisson_gaussian_event(
        noise_multiplier, sampling_probability(n, batch_size), steps_for(n, batch_size, epochs)
    )


def compose(events: list[dp_accounting.DpEvent]) -> dp_accounting.DpEvent:
    """One event for several runs on the same dataset (sequential composition)."""
    return dp_accounting.ComposedDpEvent(list(events))


def epsilon_for(event: dp_accounting.DpEvent, delta: float) -> float:
    """Epsilon of ``event`` at ``delta``, from a fresh RDP accountant."""
    return RdpAccountant().compose(event).get_epsilon(delta)


def noise_for_target_epsilon(
    target_epsilon: float, delta: float, n: int, batch_size: int, epochs_total: int
) -> float:
    """The noise multiplier whose run spends between 99% and 100% of ``target_epsilon``.

    Bisection on ``log(noise)``: epsilon falls monotonically as the noise grows, and stopping on
    the epsilon (not on the noise) is what guarantees the 1% promise.
    """
    if target_epsilon <= 0:
        raise ValueError(f"target epsilon must be positive (got {target_epsilon})")

    def eps(noise: float) -> float:
        return epsilon_for(dp_sgd_event(noise, n, batch_size, epochs_total), delta)

    low, high = _MIN_NOISE, _MAX_NOISE  # eps(low) is huge, eps(high) is tiny
    if eps(high) > target_epsilon:
        raise ValueError(f"epsilon {target_epsilon} is unreachable even with noise {_MAX_NOISE}")
    if eps(low) <= target_epsilon:
        return low
    for _ in range(200):
        middle = math.sqrt(low * high)
        spent = eps(middle)
        if spent > target_epsilon:
            low = middle
        elif spent >= (1.0 - TARGET_TOLERANCE) * target_epsilon:
            return middle
        else:
            high = middle
    return high


def event_to_json(event: dp_accounting.DpEvent) -> str:
    """A faithful JSON text of ``event``: every attrs field, nested events included, no pickle."""
    return json.dumps(_encode(event), sort_keys=True)


def event_from_json(text: str) -> dp_accounting.DpEvent:
    """The DpEvent that ``event_to_json`` wrote; only ``dp_accounting.dp_event`` classes are built."""
    event = _decode(json.loads(text))
    if not isinstance(event, dp_accounting.DpEvent):
        raise ValueError("JSON does not hold a DpEvent")
    return event


_EVENT_TYPES: dict[str, type[dp_accounting.DpEvent]] = {
    name: cls
    for name, cls in vars(dp_event).items()
    if isinstance(cls, type) and issubclass(cls, dp_accounting.DpEvent)
}


def _encode(value: Any) -> Any:
    if isinstance(value, dp_accounting.DpEvent):
        fields = {f.name: _encode(getattr(value, f.name)) for f in attr.fields(type(value))}
        return {"type": type(value).__name__, **fields}
    if isinstance(value, (list, tuple)):
        return [_encode(item) for item in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot serialise {type(value).__name__} inside a DpEvent")


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        kind = value.get("type")
        if kind not in _EVENT_TYPES:
            raise ValueError(f"unknown DpEvent type {kind!r}")
        fields = {key: _decode(item) for key, item in value.items() if key != "type"}
        return _EVENT_TYPES[kind](**fields)
    if isinstance(value, list):
        return [_decode(item) for item in value]
    return value
