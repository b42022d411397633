"""Poisson subsampling, drawn inside the training graph from a generator the OS seeds.

The accountant (``shared.privacy_accounting.DpSchedule``) analyses every step as Poisson
subsampling: each of the ``n`` examples joins the step's batch independently with probability
``q``. This module draws exactly that, no shuffled fixed-size batches: one uniform number per
example per step, compared with ``q`` in float64 (so the inclusion probability is ``q`` to 1e-16,
not to float32's 6e-8). The realised batch size is therefore Binomial(n, q) and may be 0; the
trainer still adds noise on an empty step.

The generator's whole Philox state (counter and key, 192 bits) comes from ``os.urandom``: no
seed that could be known or repeated, whatever ``tf.random.set_seed`` the process called. A
known seed would let anyone who sees the weights undo the noise or the sampling.
"""

from __future__ import annotations

import math
import os

import numpy as np
import tensorflow as tf

_PHILOX_STATE_WORDS = 3


def os_seeded_generator() -> tf.random.Generator:
    """A fresh Philox generator whose entire state is read from ``os.urandom``."""
    state = np.frombuffer(os.urandom(8 * _PHILOX_STATE_WORDS), dtype=np.int64).copy()
    return tf.random.Generator.from_state(state, alg="philox")


def poisson_sample(generator: tf.random.Generator, n: int, rate: float) -> tf.Tensor:
    """Indices (int32, ascending) of one Poisson sample: each of ``range(n)`` kept w.p. ``rate``."""
    draws = generator.uniform([n], dtype=tf.float64)
    return tf.cast(tf.where(draws < rate)[:, 0], tf.int32)


def epoch_boundaries(steps: int, rate: float) -> list[int]:
    """Step counts after which an "epoch" ends, for progress only: ``ceil(e / rate)``, then ``steps``.

    Under Poisson sampling an epoch is not a pass over the data, just ``1/rate`` steps in
    expectation. A schedule of ``ceil(E / rate)`` steps (``DpSchedule.for_epochs``) thus shows
    exactly ``E`` epochs.
    """
    ends: list[int] = []
    epoch = 1
    while steps > 0 and math.ceil(epoch / rate) < steps:
        ends.append(math.ceil(epoch / rate))
        epoch += 1
    return [*ends, steps] if steps > 0 else []
