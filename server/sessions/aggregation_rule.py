"""How a session's server combines the sites' updates, as the admin chose it at approval.

``fedprox`` (the default) is FedProx's example-weighted mean: a site weighs in with the count
approved for it (capped at the secure-aggregation weight cap on both paths), never with a count
it claims. The robust rules give every site one vote, whatever its count, per coordinate:
``median`` (Flower's ``FedMedian``, Yin et al. 2018) and ``trimmed-mean`` (``FedTrimmedAvg``:
drop the ``trim_fraction`` largest and smallest values of each coordinate, average the rest).
With ``2f < n`` results a median cannot be dragged outside the range of the honest values by
``f`` sites, whatever they send; the weighted mean can be moved anywhere the norm bound allows.

A robust rule needs each site's update, so it cannot run under secure aggregation (the server
sees only the sum): that combination is refused at approval. Clients are unaffected either way:
they train with the FedProx proximal term as in every session.

This module is plain data (no Flower, no TensorFlow): the admin's commands and the analysts'
views read it; ``fedprox`` applies it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Any

from shared.errors import ConfigError


class Aggregator(str, Enum):
    """The rules an admin can pick (``fl-server approve --aggregator``)."""

    FEDPROX = "fedprox"
    TRIMMED_MEAN = "trimmed-mean"
    MEDIAN = "median"


#: Flower's ``FedTrimmedAvg`` default (beta = 0.2).
DEFAULT_TRIM_FRACTION = 0.2
#: A robust rule needs this many results in a round to outvote one site.
MIN_ROBUST_RESULTS = 3


@dataclass(frozen=True)
class AggregationRule:
    """One session's rule; ``trim_fraction`` is the share cut from each end (trimmed mean only)."""

    aggregator: Aggregator = Aggregator.FEDPROX
    trim_fraction: float | None = None

    @property
    def robust(self) -> bool:
        return self.aggregator is not Aggregator.FEDPROX

    def trimmed_per_end(self, results: int) -> int:
        """How many values a trimmed mean drops at each end of a coordinate of ``results`` values."""
        return int((self.trim_fraction or 0.0) * results)

    def config(self) -> dict[str, Any]:
        """The session config's entry (``aggregation``)."""
        entry: dict[str, Any] = {"aggregator": self.aggregator.value}
        if self.aggregator is Aggregator.TRIMMED_MEAN:
            entry["trim_fraction"] = self.trim_fraction
        return entry

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> AggregationRule:
        """A session config's rule; sessions approved before the option existed ran ``fedprox``."""
        entry = config.get("aggregation") or {}
        return cls(Aggregator(entry.get("aggregator", Aggregator.FEDPROX.value)), entry.get("trim_fraction"))

    def describe(self, *, secure_aggregation: bool = False) -> str:
        """What the version views print."""
        if self.aggregator is Aggregator.MEDIAN:
            return "coordinate-wise median (one vote per site)"
        if self.aggregator is Aggregator.TRIMMED_MEAN:
            return f"coordinate-wise trimmed mean, {self.trim_fraction:g} cut at each end (one vote per site)"
        return "FedProx example-weighted mean" + (" (secure aggregation: the server saw only the sum)"
                                                 if secure_aggregation else "")


def choose_rule(name: str | Aggregator, trim_fraction: float | None, *, secure_aggregation: bool,
                min_results: int) -> AggregationRule:
    """The admin's choice, checked at approval so a session that cannot run it never starts."""
    try:
        aggregator = Aggregator(name)
    except ValueError:
        raise ConfigError(f"no aggregator {name!r}",
                          hint=f"Choose one of {', '.join(a.value for a in Aggregator)}.") from None
    if aggregator is not Aggregator.TRIMMED_MEAN and trim_fraction is not None:
        raise ConfigError(f"a trim fraction is for --aggregator {Aggregator.TRIMMED_MEAN.value}, not {aggregator.value}",
                          hint="Leave --trim-fraction out, or choose the trimmed mean.")
    rule = AggregationRule(aggregator, _trim(aggregator, trim_fraction))
    if not rule.robust:
        return rule
    if secure_aggregation:
        raise ConfigError(
            f"the {aggregator.value} aggregator needs each site's update, but with secure aggregation the "
            "server sees only their sum",
            hint="Approve with --no-secure-aggregation (the server then sees each site's DP-noised update), "
                 "or keep secure aggregation with --aggregator fedprox.",
        )
    if min_results < MIN_ROBUST_RESULTS:
        raise ConfigError(
            f"the {aggregator.value} aggregator needs at least {MIN_ROBUST_RESULTS} results per round to outvote "
            f"one site; this session may aggregate {min_results}",
            hint="Approve 3 or more requests together with --min-clients 3 or more, or use --aggregator fedprox.",
        )
    if rule.aggregator is Aggregator.TRIMMED_MEAN and rule.trimmed_per_end(min_results) == 0:
        smallest = math.ceil(100 / min_results) / 100
        raise ConfigError(
            f"a trimmed mean cutting {rule.trim_fraction:g} at each end of {min_results} results cuts nothing",
            hint=(f"Use --trim-fraction {smallest:g} or more" if smallest < 0.5 else "Use --aggregator median")
            + f" (rounds may have as few as {min_results} results).",
        )
    return rule


def _trim(aggregator: Aggregator, fraction: float | None) -> float | None:
    if aggregator is not Aggregator.TRIMMED_MEAN:
        return None
    fraction = DEFAULT_TRIM_FRACTION if fraction is None else float(fraction)
    if not 0 < fraction < 0.5:
        raise ConfigError(f"the trim fraction must be above 0 and below 0.5 (got {fraction:g})",
                          hint=f"The default is {DEFAULT_TRIM_FRACTION:g}, as Flower's FedTrimmedAvg.")
    return fraction
