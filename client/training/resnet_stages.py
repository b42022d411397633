"""The top stages of a Keras ResNet50 re-expressed with matrix products, so they train fast on CPU.

TensorFlow's CPU kernels for convolution gradients are pathologically slow on the tiny feature
maps that ResNet50 has at 32-64 px (measured here: the gradient of conv5 alone, batch 64 at 32
px, takes ~9 s while the whole forward pass takes ~0.2 s). A 1x1 convolution is a matrix
product on (subsampled) pixels, and a 3x3 "same" convolution is a sum of nine shifted 1x1
products; written that way with the layers' own variables, forward values are the same as
Keras' and gradients are plain matmul gradients. Only the structure of Keras' ResNet50 (v1
bottleneck blocks, ``conv{stage}_block{b}_{0..3}_{conv,bn}`` names) is assumed.

``silence_blocks`` turns blocks into exact identities, so a pretraining budget can go to fewer
blocks while the file stays a complete ResNet50.
"""

from __future__ import annotations

import tensorflow as tf

#: ResNet50 stages from the top, with the layer whose output feeds each one.
STAGE_INPUTS: dict[str, str] = {
    "conv5_": "conv4_block6_out",
    "conv4_": "conv3_block4_out",
    "conv3_": "conv2_block3_out",
    "conv2_": "pool1_pool",
}


def top_stages(train_stages: int) -> tuple[str, ...]:
    """The names of the last ``train_stages`` stages, deepest first."""
    stages = tuple(STAGE_INPUTS)
    if not 1 <= train_stages <= len(stages):
        raise ValueError(f"train_stages must be 1..{len(stages)} (got {train_stages})")
    return stages[:train_stages]


def stage_input_model(backbone: tf.keras.Model, train_stages: int) -> tf.keras.Model:
    """Images -> the activations that enter the lowest of the top ``train_stages`` stages."""
    lowest = top_stages(train_stages)[-1]
    return tf.keras.Model(backbone.input, backbone.get_layer(STAGE_INPUTS[lowest]).output)


def stage_layers(
    backbone: tf.keras.Model, train_stages: int, blocks: int | None = None
) -> list[tf.keras.layers.Layer]:
    """The layers of the first ``blocks`` blocks (all when None) of the top ``train_stages`` stages."""
    return [
        layer for layer in backbone.layers
        if layer.name.startswith(top_stages(train_stages))
        and (blocks is None or _block_number(layer.name) <= blocks)
    ]


def silence_blocks(backbone: tf.keras.Model, train_stages: int, blocks: int) -> None:
    """Make every block after the first ``blocks`` of each top stage an exact identity.

    Zeroing the last BatchNorm's scale and shift zeroes a block's residual branch; its input is a
    ReLU output (>= 0), so ``relu(input + 0)`` is the input. This is the "zero-gamma" residual
    initialisation of Goyal et al. (2017); here those blocks simply stay silent.
    """
    for layer in backbone.layers:
        if (layer.name.startswith(top_stages(train_stages)) and layer.name.endswith("_3_bn")
                and _block_number(layer.name) > blocks):
            layer.gamma.assign(tf.zeros_like(layer.gamma))
            layer.beta.assign(tf.zeros_like(layer.beta))


def run_top_stages(
    backbone: tf.keras.Model,
    x: tf.Tensor,
    train_stages: int,
    *,
    training: bool,
    blocks: int | None = None,
) -> tf.Tensor:
    """Apply the top ``train_stages`` stages to their input ``x``, then average-pool (2048 features).

    ``training`` is passed to the BatchNorm layers (batch statistics and moving-average
    updates when true), exactly as ``backbone(images, training=...)`` would. With ``blocks``,
    only each stage's first ``blocks`` blocks run: exact when the others are silenced.
    """
    names = {layer.name for layer in backbone.layers}
    for stage in reversed(top_stages(train_stages)):
        block = 1
        while f"{stage}block{block}_out" in names and (blocks is None or block <= blocks):
            name = f"{stage}block{block}"
            x = _bottleneck(backbone, name, x, f"{name}_0_conv" in names, training)
            block += 1
    return tf.reduce_mean(x, axis=(1, 2))


def _block_number(name: str) -> int:
    """``conv5_block3_2_conv`` -> 3."""
    return int(name.split("_")[1].removeprefix("block"))


def _bottleneck(
    backbone: tf.keras.Model, name: str, x: tf.Tensor, projection: bool, training: bool
) -> tf.Tensor:
    """One ResNet v1 bottleneck block: 1x1 (strided) -> 3x3 -> 1x1, plus the shortcut."""
    def conv_bn(part: str, inputs: tf.Tensor) -> tf.Tensor:
        conv = backbone.get_layer(f"{name}_{part}_conv")
        return backbone.get_layer(f"{name}_{part}_bn")(matmul_conv(conv, inputs), training=training)

    shortcut = conv_bn("0", x) if projection else x
    y = tf.nn.relu(conv_bn("1", x))
    y = tf.nn.relu(conv_bn("2", y))
    return tf.nn.relu(shortcut + conv_bn("3", y))


def matmul_conv(conv: tf.keras.layers.Conv2D, x: tf.Tensor) -> tf.Tensor:
    """``conv(x)`` for the two kinds ResNet blocks use: 1x1 (any stride) and 3x3 stride-1 "same"."""
    kernel = conv.kernel
    height, width = int(kernel.shape[0]), int(kernel.shape[1])
    if (height, width) == (1, 1):
        stride_h, stride_w = conv.strides
        y = _pointwise(x[:, ::stride_h, ::stride_w, :], kernel[0, 0])
    elif conv.strides == (1, 1) and conv.padding == "same" and height == width and height % 2:
        y = _same_conv(x, kernel)
    else:
        raise ValueError(f"{conv.name}: unsupported convolution {kernel.shape} {conv.strides}")
    return y + conv.bias if conv.use_bias else y


def _pointwise(x: tf.Tensor, matrix: tf.Tensor) -> tf.Tensor:
    return tf.einsum("bhwc,cd->bhwd", x, matrix)


def _same_conv(x: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
    """Sum of shifted pointwise products; taps that only ever see padding are skipped."""
    size = int(kernel.shape[0])
    pad = size // 2
    height, width = int(x.shape[1]), int(x.shape[2])
    padded = tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    terms = [
        _pointwise(padded[:, i : i + height, j : j + width, :], kernel[i, j])
        for i in range(size)
        for j in range(size)
        if _sees_data(i, pad, height) and _sees_data(j, pad, width)
    ]
    return tf.add_n(terms)


def _sees_data(offset: int, pad: int, length: int) -> bool:
    """Whether a window starting at ``offset`` of the padded axis overlaps the real pixels."""
    return offset + length > pad and offset < pad + length
