"""The sum of per-example clipped gradients of one batch: TF-Privacy's norms, one backward pass.

``clipped_gradient_sum`` returns ``sum_i min(1, C / |g_i|) * g_i`` over the batch, where ``g_i``
is example ``i``'s gradient of its cross-entropy with respect to every trainable variable. Two
ways, picked per model:

- Fast ("ghost norm", TF-Privacy's layer registry) when every trainable layer is registered
  (Dense: the dense head). TF-Privacy's ``DPModel`` runs the model twice for this: once to get the
  norms, once more for the gradient of the clip-weighted loss. Here the two are fused: the
  forward pass records each registered layer's pre-activation ``z`` (the registry's "base
  vars"), one backward pass gives ``G = dL/dz`` (row ``i`` is example ``i``'s own, since examples
  do not mix), the registry turns ``G`` and the layer input into per-example norms, and the
  clipped sum of a layer's weight gradients is the backward step of ``z`` alone with the rows of
  ``G`` scaled by their clip weights (for Dense, ``x^T diag(c) G``). No second pass through the
  model.
- Vectorised per-example gradients (``tf.vectorized_map``, clipped with TF-Privacy's
  ``clip_gradients_vmap``) otherwise: unfrozen ResNet stages. Done in chunks of ``chunk``
  examples so memory stays bounded whatever the realised Poisson batch size.

Both also return the batch's summed cross-entropy and count of correct predictions (for the
site's own progress display). The model must not mix examples (BatchNorm in inference mode,
which ``shared.classifier`` guarantees), or no per-example gradient exists at all.
"""

from __future__ import annotations

import tensorflow as tf
from tensorflow_privacy.privacy.fast_gradient_clipping import (
    clip_grads,
    gradient_clipping_utils,
)
from tensorflow_privacy.privacy.fast_gradient_clipping.layer_registry import (
    LayerRegistry,
    make_default_layer_registry,
)
from tensorflow_privacy.privacy.optimizers.dp_optimizer_keras_vectorized import (
    clip_gradients_vmap,
)

Gradients = list[tf.Tensor]
#: Examples whose per-example gradients are materialised at once on the vectorised path.
DEFAULT_CHUNK = 8


def fast_norms_apply(model: tf.keras.Model, registry: LayerRegistry | None = None) -> bool:
    """True when every trainable layer of ``model`` has a registered ghost-norm function."""
    registry = registry or make_default_layer_registry()
    return gradient_clipping_utils.has_internal_compute_graph(
        model
    ) and gradient_clipping_utils.all_trainable_layers_are_registered(model, registry)


def per_example_loss(labels: tf.Tensor, probabilities: tf.Tensor) -> tf.Tensor:
    """Cross-entropy of each example (the classifier outputs probabilities)."""
    return tf.keras.losses.sparse_categorical_crossentropy(labels, probabilities)


def correct_count(labels: tf.Tensor, probabilities: tf.Tensor, mask: tf.Tensor | None = None) -> tf.Tensor:
    """How many (unmasked) examples the model classifies right."""
    predicted = tf.argmax(probabilities, axis=-1, output_type=labels.dtype)
    right = tf.cast(tf.equal(predicted, labels), tf.float32)
    return tf.reduce_sum(right if mask is None else right * mask)


class ClippedGradientSum:
    """``(x, y) -> (clipped gradient sum, loss sum, correct count)`` for one model (graph code)."""

    def __init__(self, model: tf.keras.Model, l2_norm_clip: float, *, chunk: int = DEFAULT_CHUNK) -> None:
        self.model = model
        self.clip = float(l2_norm_clip)
        self.chunk = int(chunk)
        self.registry = make_default_layer_registry()
        self.fast = fast_norms_apply(model, self.registry)

    def __call__(self, x: tf.Tensor, y: tf.Tensor) -> tuple[Gradients, tf.Tensor, tf.Tensor]:
        return self._fused_ghost(x, y) if self.fast else self._vectorised(x, y)

    @tf.autograph.experimental.do_not_convert  # straight-line code; TF-Privacy's helpers stay as-is
    def _fused_ghost(self, x: tf.Tensor, y: tf.Tensor) -> tuple[Gradients, tf.Tensor, tf.Tensor]:
        variables = self.model.trainable_variables
        tape = tf.GradientTape(persistent=True, watch_accessed_variables=False)
        with tape:
            tape.watch(variables)
            generator = clip_grads.get_registry_generator_fn(tape, self.registry, None)
            probabilities, recorded = gradient_clipping_utils.model_forward_pass(
                self.model, x, generator_fn=generator
            )
            losses = per_example_loss(y, probabilities)
            total = tf.reduce_sum(losses)
        layers = [entry for entry in recorded if entry is not None]  # (z, sqr_norm_fn, weights)
        z_grads = tape.gradient(total, [z for z, _, _ in layers],
                                unconnected_gradients=tf.UnconnectedGradients.ZERO)
        squared = tf.add_n([norm_fn(g) for (_, norm_fn, _), g in zip(layers, z_grads)])
        weights = clip_grads.compute_clip_weights(self.clip, tf.sqrt(squared))
        by_variable: dict = {}
        for (z, _, layer_weights), g in zip(layers, z_grads):
            scale = tf.reshape(weights, tf.concat([[-1], tf.ones([tf.rank(g) - 1], tf.int32)], 0))
            grads = tape.gradient(z, layer_weights, output_gradients=g * scale,
                                  unconnected_gradients=tf.UnconnectedGradients.ZERO)
            by_variable.update({w.ref(): grad for w, grad in zip(layer_weights, grads)})
        del tape
        sums = [by_variable[v.ref()] for v in variables]
        return sums, total, correct_count(y, probabilities)

    def _vectorised(self, x: tf.Tensor, y: tf.Tensor) -> tuple[Gradients, tf.Tensor, tf.Tensor]:
        variables = self.model.trainable_variables
        sums = [tf.zeros_like(v) for v in variables]
        loss_sum, correct = tf.constant(0.0), tf.constant(0.0)
        for start in tf.range(0, tf.shape(y)[0], self.chunk):
            part = slice(start, start + self.chunk)
            grads, losses, probabilities = tf.vectorized_map(self._one_example, (x[part], y[part]))
            sums = [s + tf.reduce_sum(g, axis=0) for s, g in zip(sums, grads)]
            loss_sum += tf.reduce_sum(losses)
            correct += correct_count(y[part], probabilities)
        return sums, loss_sum, correct

    def _one_example(self, example: tuple[tf.Tensor, tf.Tensor]) -> tuple[Gradients, tf.Tensor, tf.Tensor]:
        x, y = example
        with tf.GradientTape() as tape:
            probabilities = self.model(x[tf.newaxis], training=True)
            loss = per_example_loss(y[tf.newaxis], probabilities)[0]
        grads = tape.gradient(loss, self.model.trainable_variables,
                              unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return clip_gradients_vmap(grads, self.clip), loss, probabilities[0]
