"""How far an honest site's update can move the weights, from the schedule the server approved.

The server fixes every site's DP-SGD schedule at approval (``privacy_plan``), so it knows how far
an honest site can go in one round, and a session's default update-norm bound is that, per site,
rather than one number for every site size and epsilon (a fixed 150 dropped honest updates: at
the defaults a 20-image site at epsilon 1 moves by about 580, almost all of it noise).

A site runs ``steps`` plain-SGD steps of ``w -= lr * (S_t + Z_t) / (q n) + lr * mu * (w - w_global)``
(``client.training.dp_engines``): ``S_t`` a sum of ``|B_t|`` gradients clipped to ``C``, ``Z_t`` Gaussian
noise of std ``sigma * C`` per coordinate, ``q n`` the expected batch. The proximal term only shrinks
the distance to ``w_global``, so by the triangle inequality the round's update is at most

- signal: ``lr * C * sum_t |B_t| / (q n)``, where ``sum_t |B_t|`` is binomial with mean
  ``steps * q * n``; bounded by its mean plus six standard deviations (and 6, for tiny means);
- noise: ``lr * sigma * C / (q n)`` times the norm of a standard Gaussian in ``steps * d``
  dimensions, at most ``sqrt(steps * d) + 6`` but with probability ``exp(-18)``.

``n`` is the site's true count, which the server knows only as declared: exact, or rounded up to a
bucket that overstates it by at most a third of its value (``bucket_examples``), so the bound
takes the smallest count the declaration allows. The sessions' optimizer is SGD (an Adam step's
size does not follow this); an admin who wants one fixed bound still sets ``--max-update-norm``.
"""

from __future__ import annotations

import math

from shared.privacy_accounting import DpSchedule

#: A declared (bucketed) count is at most this many times the site's true count.
BUCKET_OVERSTATEMENT = 1.5
#: Standard deviations above the mean allowed for the realised batch sizes and the noise's norm.
TAIL = 6.0


def honest_update_bound(schedule: DpSchedule, *, examples: int, learning_rate: float, trainable_values: int) -> float:
    """Largest L2 distance an honest round under ``schedule`` moves ``trainable_values`` weights (but w.p. ~1e-8)."""
    fewest = max(1.0, examples / BUCKET_OVERSTATEMENT)
    expected_batch = schedule.sampling_rate * fewest
    drawn = schedule.steps * expected_batch
    signal = schedule.l2_norm_clip * (drawn + TAIL * math.sqrt(drawn) + TAIL) / expected_batch
    noise = (schedule.noise_multiplier * schedule.l2_norm_clip / expected_batch
             * (math.sqrt(schedule.steps * trainable_values) + TAIL))
    return learning_rate * (signal + noise)
