"""What a weights group without architecture still says: roles from the names frameworks give
variables (Hugging Face's `weight`, `cls_token`, ...), and a layer's class from Keras's default
layer name (`batch_normalization_3`, `cu_dnnlstm_1`) or from its set of variables and shapes.

Used by the legacy HDF5 reader for `save_weights` files (Keras 2, tf_keras, Hugging Face
`tf_model.h5`), whose groups name layers but never their classes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from wpipe.readers.roles import BN_ROLES, ROLES, class_of_group, rnn_class

Shape = tuple[int, ...]

# Scopes whose 2-D `weight` is a lookup table: HF's word embeddings, GPT-2's wte/wpe, T5's
# shared table and relative attention bias (created by name, not as keras Embedding layers).
_EMBEDDING_SCOPE = re.compile(r"(embed|^wte$|^wpe$|^shared$|relative_attention_bias)", re.I)
_NORM_SCOPE = re.compile(r"(norm|^ln(_\w+)?$|^ln\d*$)", re.I)
# Variables HF layers create by name: learned tokens and position tables are embeddings
# (one vector per token/position), ConvNeXt's layer scale is a per-channel gamma.
NAMED_ROLES = {
    "position_embeddings": "embeddings",
    "cls_token": "embeddings",
    "mask_token": "embeddings",
    "distillation_token": "embeddings",
    "layer_scale_parameter": "gamma",
}
# The generic name of frameworks that name no role: what it is follows from scope and shape.
GENERIC = "weight"
RECURRENT = {"LSTM": 4, "GRU": 3, "SimpleRNN": 1, "CuDNNLSTM": 4, "CuDNNGRU": 3}
MODEL_CLASSES = {"Sequential", "Functional", "Model"}
# Layers whose variables sit in scopes of their own (cells, halves, heads): one layer, never
# split into sub-layers by those scopes.
SCOPED_CLASSES = {"Bidirectional", "TimeDistributed", "MultiHeadAttention", "LSTM", "GRU",
                  "SimpleRNN", "ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D"}  # fmt: skip


def role_from_name(scope: str, name: str, shape: Shape) -> tuple[str, str]:
    """(canonical weight name, role) of a variable named `name` in layer scope `scope`."""
    if name in NAMED_ROLES:
        return name, NAMED_ROLES[name]
    if name != GENERIC:
        return name, name
    if len(shape) == 2 and _EMBEDDING_SCOPE.search(scope):
        return "embeddings", "embeddings"
    if len(shape) >= 2:
        return "kernel", "kernel"  # GPT-2's Conv1D: x @ weight, (in, out) like a Dense kernel
    if len(shape) == 1 and _NORM_SCOPE.search(scope):
        return "gamma", "gamma"  # T5's RMS norm: a scale only
    return name, name


def group_class(name: str) -> str | None:
    """The class a Keras default layer name stands for (`cu_dnnlstm_1` -> CuDNNLSTM)."""
    return class_of_group(name.rsplit("/", 1)[-1])


def infer_class(name: str, variables: Sequence[tuple[str, Shape]]) -> str | None:
    """A leaf layer's class from its default name when its variables fit it, else from the
    variables (role, shape) alone; None where neither says."""
    by_name = group_class(name)
    by_shape = class_from_variables(name, variables)
    if by_name in RECURRENT and by_shape in RECURRENT:
        return by_shape  # an LSTM's bias of 8 x units is cuDNN's, whatever the layer is named
    if by_name is not None and _fits(by_name, variables):
        return by_name
    return by_shape


def _fits(class_name: str, variables: Sequence[tuple[str, Shape]]) -> bool:
    roles = {r for r, _ in variables}
    known = ROLES.get(class_name)
    if known is not None:
        kernel = dict(variables).get("kernel")
        return roles <= set(known) and (kernel is None or _rank_fits(class_name, len(kernel)))
    if class_name in RECURRENT:
        return roles <= {"kernel", "recurrent_kernel", "bias"}
    return True  # wrappers, attention, weightless layers: their own scopes say the rest


def _rank_fits(class_name: str, rank: int) -> bool:
    """A Dense kernel is 2-D, a ConvND(Transpose) kernel (N+2)-D; others say nothing."""
    conv = re.search(r"Conv(\d)D", class_name)
    if conv:
        return rank == int(conv.group(1)) + 2
    return rank == 2 if class_name == "Dense" else True


def class_from_variables(name: str, variables: Sequence[tuple[str, Shape]]) -> str | None:
    roles = {r: s for r, s in variables}
    if len(roles) != len(variables):
        return None  # a role twice: several layers' variables, not one layer
    kernel, bias = roles.get("kernel"), roles.get("bias")
    if set(roles) == {"embeddings"} and len(roles["embeddings"]) == 2:
        return "Embedding"
    if set(roles) in ({"kernel", "recurrent_kernel"}, {"kernel", "recurrent_kernel", "bias"}):
        return _recurrent(kernel, roles["recurrent_kernel"], bias)
    if "pointwise_kernel" in roles and set(roles) <= {"depthwise_kernel", "pointwise_kernel",
                                                       "bias"}:  # fmt: skip
        return _ranked("SeparableConv", roles["pointwise_kernel"])
    if set(roles) in ({"depthwise_kernel"}, {"depthwise_kernel", "bias"}):
        return _ranked("DepthwiseConv", roles["depthwise_kernel"])
    if set(roles) in ({"kernel"}, {"kernel", "bias"}):
        return _kernel_class(kernel, bias)
    if set(roles) <= set(BN_ROLES) and {"moving_mean", "moving_variance"} <= set(roles):
        return "BatchNormalization"
    if set(roles) == {"gamma", "beta"} or (set(roles) == {"gamma"} and _NORM_SCOPE.search(
            name.rsplit("/", 1)[-1])):  # fmt: skip
        return "LayerNormalization"
    if set(roles) == {"alpha"}:
        return "PReLU"
    return None


def _recurrent(kernel: Shape, recurrent: Shape, bias: Shape | None) -> str | None:
    """LSTM / GRU / SimpleRNN by the recurrent kernel's gates; CuDNNLSTM / CuDNNGRU by a bias
    of two bias vectors per gate (8 x units / 6 x units, one dimension)."""
    shapes = [kernel, recurrent, bias if bias is not None else (0,)]
    cls = rnn_class(shapes)
    if cls is None or bias is None or len(bias) != 1:
        return cls
    units = recurrent[0]
    if cls == "LSTM" and bias[0] == 8 * units:
        return "CuDNNLSTM"
    if cls == "GRU" and bias[0] == 6 * units:
        return "CuDNNGRU"
    return cls


def _kernel_class(kernel: Shape, bias: Shape | None) -> str | None:
    """Dense / ConvND from a kernel's rank; ConvNDTranspose when the bias matches the
    kernel's output axis (-2) and not its last; None when the bias fits neither."""
    rank = len(kernel)
    if not 2 <= rank <= 5:
        return None
    if rank > 2 and bias is not None and bias == (kernel[-2],) and kernel[-2] != kernel[-1]:
        return f"Conv{rank - 2}DTranspose"
    if bias is not None and not _per_unit(bias, kernel[-1]):
        return None
    return "Dense" if rank == 2 else f"Conv{rank - 2}D"


def _per_unit(bias: Shape, units: int) -> bool:
    """One value per output unit: (units,), or (1, units) as GPT-2's Conv1D stores it."""
    return bool(bias) and bias[-1] == units and all(d == 1 for d in bias[:-1])


def _ranked(stem: str, kernel: Shape) -> str | None:
    rank = len(kernel)
    return f"{stem}{rank - 2}D" if rank in (3, 4) else None


def layer_class(name: str, variables: Sequence[tuple[str, str, Shape]]) -> str | None:
    """infer_class from (weight name, role, shape); a user-named layer whose variables all
    sit in forward/backward halves is a Bidirectional."""
    halves = {weight_name.split("/", 1)[0] for weight_name, _, _ in variables}
    if variables and halves == {"forward", "backward"}:
        return "Bidirectional"
    return infer_class(name, [(role, shape) for _, role, shape in variables])


def wrapped_config(
    class_name: str | None, variables: Sequence[tuple[str, str, Shape]]
) -> dict | None:
    """The config a Bidirectional or TimeDistributed group implies: its wrapped layer's class
    from the (weight name, role, shape) of its variables (of the forward half), as the native
    reader does for files without architecture."""
    if class_name not in ("Bidirectional", "TimeDistributed"):
        return None
    if class_name == "Bidirectional":
        variables = [v for v in variables if v[0].startswith("forward/")]
    inner = class_from_variables("", [(role, shape) for _, role, shape in variables])
    return {"layer": {"class_name": inner, "config": {}}} if inner else None
