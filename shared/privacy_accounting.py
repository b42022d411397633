"""Privacy accounting shared by the server's ledger and the site's: DpEvents, PLD epsilons, the schedule.

The contract. For every site in a session the server decides one :class:`DpSchedule` at approval
(noise multiplier sigma, Poisson sampling rate q, steps, clip) from public inputs only: the site's
declared or bucketed example count, the batch size and the epochs it asked for. It records the
schedule in its own ledger and sends it; the site checks it, trains exactly it and records the
same event in its ledger. Each step includes every example independently with probability q
(Poisson subsampling), clips each example's gradient and adds Gaussian noise sigma * clip to the
sum; so one round is ``SelfComposed(PoissonSampled(q, Gaussian(sigma)), steps)`` and a session
is that round composed ``rounds`` times. The neighbouring relation is add/remove one example
(one image); with at most k slices per patient, group privacy gives the patient-level figure.

Epsilons. Every epsilon shown, spent or enforced comes from dp_accounting's PLD accountant
(privacy loss distributions, pessimistic discretisation, so the figure is an upper bound); the
RDP accountant's epsilon is reported beside it as a cross-check (it is always the larger, looser
one). A total is the accountant's composition of all events, never a sum of epsilons.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import attr
import dp_accounting
from dp_accounting import dp_event, mechanism_calibration
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant

from shared.errors import ConfigError, PrivacyBudgetExceeded

#: PLD grid step of the privacy loss. The discretisation is pessimistic (rounds losses up), so a
#: coarser grid only makes epsilon slightly larger, never smaller; 1e-3 moves it by < 1e-3
#: against the library's default 1e-4 and is ten times faster.
PLD_DISCRETISATION = 1e-3
#: Noise the target-epsilon calibration never goes below (epsilon there is in the hundreds).
MIN_CALIBRATED_NOISE = 0.2
#: The rule for delta: at most one in ten times the reciprocal of the example count.
DELTA_FACTOR = 10
#: Prefix of the schedule's fields in a round's fit config (``dp_noise_multiplier``, ...).
SCHEDULE_PREFIX = "dp_"
#: What an epsilon is about, in the words every view uses.
IMAGE_UNIT = "Poisson sampling, add/remove one image"
PATIENT_UNIT = "Poisson sampling, add/remove one patient (group privacy over {k} slices)"
#: Mantissas of the buckets example counts are rounded up to (1, 1.2, 1.5, 2, ... 8 times 10^e).
_BUCKET_MANTISSAS = (10, 12, 15, 20, 25, 30, 40, 50, 60, 80)


def sampling_probability(n: int, batch_size: int) -> float:
    """The Poisson sampling rate ``q`` whose expected batch out of ``n`` is ``batch_size``."""
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
    """One local DP-SGD run (one round of one site) as the accountant sees it, fixed before training.

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
        numbers = (self.noise_multiplier, self.sampling_rate, self.l2_norm_clip)
        if not (all(math.isfinite(x) for x in numbers) and self.noise_multiplier >= 0
                and 0 < self.sampling_rate <= 1 and self.steps >= 0 and self.l2_norm_clip > 0):
            raise ValueError(f"not a DP-SGD schedule: {self}")

    @classmethod
    def for_epochs(
        cls, *, noise_multiplier: float, l2_norm_clip: float, examples: int, batch_size: int,
        epochs: int,
    ) -> DpSchedule:
        """``epochs`` expected passes over ``examples`` with expected batch ``batch_size``."""
        rate = sampling_probability(examples, batch_size)
        return cls(noise_multiplier, rate, math.ceil(epochs / rate), l2_norm_clip)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], prefix: str = "") -> DpSchedule:
        """The schedule :meth:`to_dict` wrote (a fit config or a ticket); a bad one is a ConfigError."""
        try:
            return cls(float(values[prefix + "noise_multiplier"]), float(values[prefix + "sampling_rate"]),
                       int(values[prefix + "steps"]), float(values[prefix + "l2_norm_clip"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"the server sent no valid DP schedule ({exc})",
                              hint="The server must send the schedule it approved.") from None

    def to_dict(self, prefix: str = "") -> dict[str, float | int]:
        """Plain fields, ``prefix``-ed in a Flower fit config (``SCHEDULE_PREFIX``)."""
        return {prefix + key: value for key, value in asdict(self).items()}

    @property
    def expected_epochs(self) -> float:
        """How often each example is drawn, in expectation (steps * q)."""
        return self.steps * self.sampling_rate

    def event(self) -> dp_accounting.DpEvent:
        return poisson_gaussian_event(self.noise_multiplier, self.sampling_rate, self.steps)

    def session_event(self, rounds: int) -> dp_accounting.DpEvent:
        """``rounds`` runs of this schedule on the same data: one site's whole session."""
        return dp_accounting.SelfComposedDpEvent(self.event(), rounds)


def compose(events: list[dp_accounting.DpEvent]) -> dp_accounting.DpEvent:
    """One event for several runs on the same dataset (sequential composition)."""
    return dp_accounting.ComposedDpEvent(list(events))


def epsilon_for(event: dp_accounting.DpEvent, delta: float) -> float:
    """Epsilon of ``event`` at ``delta`` from a fresh PLD accountant: the figure shown and enforced."""
    return _pld().compose(event).get_epsilon(delta)


def rdp_epsilon_for(event: dp_accounting.DpEvent, delta: float) -> float:
    """Epsilon of ``event`` at ``delta`` from an RDP accountant: the cross-check beside the PLD one."""
    return RdpAccountant().compose(event).get_epsilon(delta)


def _pld() -> PLDAccountant:
    return PLDAccountant(value_discretization_interval=PLD_DISCRETISATION)


@dataclass(frozen=True)
class PrivacySpend:
    """Epsilon of one event (a run or a composed total) at ``delta``, by both accountants."""

    epsilon: float  # PLD: shown and enforced
    epsilon_rdp: float  # RDP: the cross-check
    delta: float

    def for_patients(self, slices_per_patient: int | None) -> tuple[float, float] | None:
        """The patient-level (epsilon, delta), or None when no slice count was declared."""
        if slices_per_patient is None:
            return None
        return group_privacy(self.epsilon, self.delta, slices_per_patient)


def spend(event: dp_accounting.DpEvent, delta: float) -> PrivacySpend:
    return PrivacySpend(epsilon_for(event, delta), rdp_epsilon_for(event, delta), delta)


def group_privacy(epsilon: float, delta: float, group_size: int) -> tuple[float, float]:
    """(epsilon, delta)-DP for one example implies (k eps, k e^((k-1) eps) delta)-DP for k of them.

    The standard group-privacy conversion (Vadhan, "The Complexity of Differential Privacy",
    Lemma 2.2); dp_accounting has none. delta grows fast: above 1 the bound says nothing.
    """
    if group_size < 1:
        raise ValueError(f"group size must be >= 1 (got {group_size})")
    k = group_size
    if math.isinf(epsilon):
        return math.inf, math.inf
    return k * epsilon, min(math.inf, k * math.exp(min(700.0, (k - 1) * epsilon)) * delta)


def calibrate_noise(
    target_epsilon: float, delta: float, event_for: Callable[[float], dp_accounting.DpEvent]
) -> float:
    """The smallest noise multiplier whose ``event_for(noise)`` spends at most ``target_epsilon``.

    dp_accounting's ``calibrate_dp_mechanism`` (Brent's method) over the PLD accountant; it
    guarantees the returned noise is on the private side of the target. A target that even
    ``MIN_CALIBRATED_NOISE`` meets gets that noise.
    """
    if not target_epsilon > 0:
        raise ConfigError(f"target epsilon must be positive (got {target_epsilon})")
    if epsilon_for(event_for(MIN_CALIBRATED_NOISE), delta) <= target_epsilon:
        return MIN_CALIBRATED_NOISE
    try:
        return float(mechanism_calibration.calibrate_dp_mechanism(
            _pld, event_for, target_epsilon, delta,
            mechanism_calibration.LowerEndpointAndGuess(MIN_CALIBRATED_NOISE, 1.0), tol=1e-4,
        ))
    except (mechanism_calibration.NoBracketIntervalFoundError,
            mechanism_calibration.NoOptimumFoundError) as exc:
        raise ConfigError(f"no noise multiplier reaches epsilon {target_epsilon:g} at delta {delta:g} ({exc})",
                          hint="Ask for a larger epsilon or fewer epochs.") from None


def check_delta(delta: float, examples: int, *, what: str = "delta") -> float:
    """Refuse a delta above 1/(10 n): a larger one lets a mechanism publish a whole record."""
    limit = 1.0 / (DELTA_FACTOR * examples)
    if not 0 < delta <= limit:
        raise PrivacyBudgetExceeded(
            f"{what} {delta:g} is above 1/({DELTA_FACTOR} n) = {limit:.3g} for n = {examples} training images",
            hint=f"Use a delta of at most {limit:.3g} (e.g. {_round_down(limit):g}).",
        )
    return delta


def _round_down(value: float) -> float:
    """``value`` rounded down to one significant digit (a delta people can type)."""
    exponent = math.floor(math.log10(value))
    return math.floor(value / 10**exponent) * 10**exponent


def bucket_examples(n: int) -> int:
    """``n`` rounded up to the next of 1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8 times a power of ten.

    What a site sends instead of its exact count unless it declares that count public: each
    bucket spans at most a third of its value, so the count is known only to that precision.
    """
    if n < 1:
        raise ValueError(f"an example count must be >= 1 (got {n})")
    exponent = 0
    while True:
        for mantissa in _BUCKET_MANTISSAS:
            value, rest = divmod(mantissa * 10**exponent, 10)
            if rest == 0 and value >= n:
                return value
        exponent += 1


def declared_examples(n: int, *, public: bool) -> int:
    """The count a site plans with and sends: exact when declared public, else its bucket."""
    return n if public else bucket_examples(n)


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
