"""The federation's default training hyperparameters: one place, because both sides plan with them.

A site asks for rounds and local epochs (``fl-client request``, the menu) and estimates the
request's privacy cost with the batch size the server will approve; the admin approves with the
batch size and learning rate (``ApprovalOptions``, ``fl-server approve``). If the two sides
assumed different batch sizes, a site's estimate would not be the schedule it is sent.

Tuned head-only on the sample federation (north/south/east, 101/59/80 training images), then
confirmed through the real system with ``python -m bench.privacy_utility`` (README,
"Privacy-utility study"): with the earlier batch 16, lr 0.05-0.1, 1 local epoch the head was
undertrained, so "no DP" scored no better than epsilon 8. Per-example gradients of the head are
far above the clip (tens against 1), so every step moves by at most ``LEARNING_RATE`` times the
clip; the larger batch lowers the noise per example (sigma * clip / batch) more than the larger
sigma it needs raises it.
"""

from __future__ import annotations

#: Federated rounds a request asks for.
ROUNDS = 3
#: Expected passes over a site's training images per round (``DpSchedule.for_epochs``).
LOCAL_EPOCHS = 5
#: Expected Poisson batch size (sampling rate q = BATCH_SIZE / declared count, at most 1).
BATCH_SIZE = 64
#: Step size of the sites' DP-SGD (plain SGD on the noisy clipped mean gradient).
LEARNING_RATE = 0.5
#: Per-example L2 clip norm a request asks for.
L2_NORM_CLIP = 1.0
