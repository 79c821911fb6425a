"""Which variable of a layer is which: roles by position from what the config says, by count
and shapes when there is no config, and the classes Keras's snake_case group names stand for.

Used by the native reader, whose files name variables `0`, `1`, … (keras_formats.md §4.3).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from wpipe.readers.keras_config import quantization_mode

UNKNOWN = "unknown"
_KERNEL_BIAS = ("kernel", "bias")
_RNN_CELL = ("kernel", "recurrent_kernel", "bias")
BN_ROLES = ("gamma", "beta", "moving_mean", "moving_variance")
ROLES: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(
        ("Dense", "EinsumDense", "Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose",
         "Conv2DTranspose", "Conv3DTranspose"),
        _KERNEL_BIAS,
    ),
    **dict.fromkeys(("DepthwiseConv1D", "DepthwiseConv2D"), ("depthwise_kernel", "bias")),
    **dict.fromkeys(
        ("LSTMCell", "GRUCell", "SimpleRNNCell", "ConvLSTM1DCell", "ConvLSTM2DCell",
         "ConvLSTM3DCell"),
        _RNN_CELL,
    ),
    "SeparableConv1D": ("depthwise_kernel", "pointwise_kernel", "bias"),
    "SeparableConv2D": ("depthwise_kernel", "pointwise_kernel", "bias"),
    "Embedding": ("embeddings",),
    "ReversibleEmbedding": ("embeddings",),  # keras-hub
    "PositionEmbedding": ("embeddings",),  # keras-hub
    "BatchNormalization": BN_ROLES,
    "LayerNormalization": ("gamma", "beta"),
    "GroupNormalization": ("gamma", "beta"),
    "PReLU": ("alpha",),
    "Normalization": ("mean", "variance", "count"),
    "LayerScale": ("gamma",),  # keras.applications ConvNeXt
}  # fmt: skip
# Keras 3 quantized layers' `variable_serialization_spec` (keras/src/layers/core/dense.py); a
# missing bias, and int4's per-channel mode (no kernel_zero, g_idx), shift later indices down.
# GPTQ and AWQ save the bias first; their `quantized_kernel` is the variable named `kernel`.
QUANTIZED_ROLES = {
    "int8": ("kernel", "bias", "kernel_scale"),
    "int4": ("kernel", "bias", "kernel_scale", "kernel_zero", "g_idx"),
    "float8": ("kernel", "bias", "inputs_scale", "inputs_amax_history", "kernel_scale",
               "kernel_amax_history", "outputs_grad_scale", "outputs_grad_amax_history"),
    "gptq": ("bias", "kernel", "kernel_scale", "kernel_zero", "g_idx"),
    "awq": ("bias", "kernel", "kernel_scale", "kernel_zero", "awq_scales", "g_idx"),
}  # fmt: skip
# keras/src/layers/core/embedding.py: int4's sub-channel zero and g_idx are skipped when absent.
QUANTIZED_EMBEDDING_ROLES = {
    "int8": ("embeddings", "embeddings_scale"),
    "int4": ("embeddings", "embeddings_scale", "embeddings_zero", "g_idx"),
}
QUANTIZABLE = {"Dense", "EinsumDense"}
# Layer classes whose snake_case name Keras gives their group in a native weights file.
OTHER_CLASSES = (
    "LSTM", "GRU", "SimpleRNN", "CuDNNLSTM", "CuDNNGRU", "Model", "ConvLSTM1D", "ConvLSTM2D",
    "ConvLSTM3D", "Bidirectional",
    "TimeDistributed", "MultiHeadAttention", "InputLayer", "Sequential", "Functional",
    "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise",
    "GaussianDropout", "AlphaDropout", "Activation", "ReLU", "LeakyReLU", "ELU", "Softmax",
    "Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate", "Dot",
    "Flatten", "Reshape", "Permute", "RepeatVector", "Identity", "Masking", "Lambda",
    "Rescaling", "Resizing", "CenterCrop", "UnitNormalization", "StochasticDepth",
    "MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "AveragePooling1D", "AveragePooling2D",
    "AveragePooling3D", "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalMaxPooling3D",
    "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalAveragePooling3D",
    "ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D", "Cropping1D", "Cropping2D",
    "Cropping3D", "UpSampling1D", "UpSampling2D", "UpSampling3D",
)  # fmt: skip
_UNIQUE_SUFFIX = re.compile(r"_\d+$")


def to_snake_case(name: str) -> str:
    """Keras's keras/src/utils/naming.py rule: `Conv2DTranspose` -> `conv2d_transpose`."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


KNOWN_CLASSES = {to_snake_case(c): c for c in (*ROLES, *OTHER_CLASSES)}
KNOWN_CLASSES["input"] = "InputLayer"  # Keras 2 names an InputLayer `input_1`


def class_of_group(snake_name: str | None) -> str | None:
    """The Keras class a container group name (`batch_normalization_3`) stands for, else None."""
    if not snake_name:
        return None
    return KNOWN_CLASSES.get(snake_name) or KNOWN_CLASSES.get(_UNIQUE_SUFFIX.sub("", snake_name))


def rnn_class(shapes: Sequence[tuple[int, ...]]) -> str | None:
    """LSTM / GRU / SimpleRNN from a cell's (kernel, recurrent_kernel, bias) shapes."""
    if len(shapes) != 3 or len(shapes[1]) != 2 or not shapes[1][0]:
        return None
    gates = shapes[1][1] // shapes[1][0]
    return {4: "LSTM", 3: "GRU", 1: "SimpleRNN"}.get(gates)


def positional_roles(
    class_name: str | None,
    config: dict,
    shapes: Sequence[tuple[int, ...]],
    dtypes: Sequence[str],
) -> tuple[tuple[str, ...] | None, str | None]:
    """(role per variable or None, quantization mode) for one object's `vars` in saved order.

    With a config the roles are the class's list minus what it switches off (`use_bias`,
    `scale`, `center`, the dtype policy's quantization mode). Without one (config == {}),
    they follow from count and shapes; a position no rule decides is `unknown`.
    """
    count = len(shapes)
    mode = quantization_mode(config) if config else _quantized_by_shape(class_name, shapes, dtypes)
    if mode in QUANTIZED_ROLES and class_name in QUANTIZABLE:
        roles = _quantized_roles(mode, config, shapes)
        return (roles if roles and len(roles) == count else None), mode
    if mode in QUANTIZED_EMBEDDING_ROLES and class_name == "Embedding":
        roles = QUANTIZED_EMBEDDING_ROLES[mode][: max(count, 2)]
        return (roles if len(roles) == count else None), mode
    if class_name is None:
        return _roles_by_shape(shapes), None
    roles = ROLES.get(class_name)
    if roles is None:
        return None, None
    kept = _switched_on(roles, config)
    if len(kept) == count:
        return kept, None
    if not config:
        return _roles_by_count(class_name, roles, count), None
    return None, None


def _switched_on(roles: tuple[str, ...], config: dict) -> tuple[str, ...]:
    drop = set()
    if config.get("use_bias") is False:
        drop.add("bias")
    if config.get("scale") is False or config.get("rms_scaling"):
        drop.add("gamma")
    if config.get("center") is False or config.get("rms_scaling"):
        drop.add("beta")
    return tuple(r for r in roles if r not in drop)


def _roles_by_count(class_name: str, roles: tuple[str, ...], count: int) -> tuple[str, ...]:
    """No config: what a shorter variable list must be (Keras creates optional ones last,
    except BatchNormalization, whose moving statistics always come last)."""
    if roles == BN_ROLES and 2 <= count <= 4:
        # with three, the first is gamma (center=False) or beta (scale=False): not knowable
        return (*[UNKNOWN] * (count - 2), "moving_mean", "moving_variance")
    if class_name in ("LayerNormalization", "GroupNormalization"):
        return (UNKNOWN,) * count  # gamma alone or beta alone: the file does not say
    if count < len(roles) and roles[-1] == "bias":
        return roles[:count]  # use_bias=False drops the trailing bias
    return (UNKNOWN,) * count


def _roles_by_shape(shapes: Sequence[tuple[int, ...]]) -> tuple[str, ...] | None:
    """An object of unknown class: a kernel and its bias, or BatchNormalization's four."""
    if len(shapes) == 2 and len(shapes[0]) >= 2 and shapes[1] == (shapes[0][-1],):
        return _KERNEL_BIAS
    if len(shapes) == 4 and all(len(s) == 1 and s == shapes[0] for s in shapes):
        return BN_ROLES
    return None


def _quantized_by_shape(
    class_name: str | None, shapes: Sequence[tuple[int, ...]], dtypes: Sequence[str]
) -> str | None:
    """A quantized Dense without config: an int8 kernel (int4 packs two codes a byte), a
    uint8 kernel (GPTQ; AWQ adds one variable), or float8's scalar scales and histories."""
    if class_name not in QUANTIZABLE or len(shapes) < 2:
        return None
    if "uint8" in dtypes:  # GPTQ/AWQ: ([bias,] kernel, scale, [zero,] [awq_scales,] g_idx)
        floats = sum(d != "uint8" for d in dtypes[dtypes[0] != "uint8" :])
        return "awq" if floats == 3 else "gptq"
    if len(shapes) in (7, 8) and shapes[-2] == () and len(shapes[-1]) == 1:
        return "float8"  # ..., outputs_grad_scale (), outputs_grad_amax_history (n,)
    if dtypes[0] != "int8":
        return None
    if len(shapes) >= 4:
        return "int4"  # sub-channel: kernel_zero and g_idx as well
    scale = shapes[-1]  # (kernel, [bias,] kernel_scale): one scale per unit
    # an int8 EinsumDense keeps its scale in the output's rank; int4's per-channel one is 1-D
    return "int8" if scale and (scale[-1] == shapes[0][-1] or len(scale) > 1) else "int4"


def _quantized_roles(
    mode: str, config: dict, shapes: Sequence[tuple[int, ...]]
) -> tuple[str, ...] | None:
    roles = QUANTIZED_ROLES[mode]
    if mode in ("gptq", "awq") and shapes:
        if len(shapes[0]) != 1:  # the bias, saved first, is the only 1-D variable there
            roles = tuple(r for r in roles if r != "bias")
        if len(shapes) == len(roles) - 1:  # Keras 3.15's native save leaves kernel_zero out
            roles = tuple(r for r in roles if r != "kernel_zero")
        return roles
    if config.get("use_bias") is False or (config.get("equation") and not config.get("bias_axes")):
        roles = tuple(r for r in roles if r != "bias")
    elif not config and len(shapes) == len(roles) - 1 and mode in ("float8", "gptq", "awq"):
        roles = tuple(r for r in roles if r != "bias")  # one short without config: no bias
    elif not config and mode in ("int8", "int4") and len(shapes) in (2, 4):
        roles = tuple(r for r in roles if r != "bias")  # odd count without config: no bias
    if mode == "int4" and len(shapes) == len(roles) - 2:
        roles = tuple(r for r in roles if r not in ("kernel_zero", "g_idx"))  # per-channel
    return roles
