"""SimpleRNN, LSTM, GRU (both `reset_after`), their cuDNN variants, Bidirectional,
TimeDistributed, ConvLSTM1D/2D — vectorised over the batch; only the time loop is Python.

Inputs are projected for every time step in one matrix product; each step then costs one
product with the recurrent kernel. Gate blocks: LSTM i, f, c, o; GRU z, r, h (Keras order).
Initial states are zero (files store no state); masks are not applied.
"""

from __future__ import annotations

import numpy as np

from wpipe.forward import activations
from wpipe.forward.base import REGISTRY, Arrays, Call, Unsupported, channels_first, layer
from wpipe.forward.conv import convolve, spatial_params
from wpipe.readers.base import from_cudnn


def _acts(call: Call, default_recurrent: str) -> tuple:
    act = activations.get(call.config.get("activation", "tanh"), call.keras_major)
    spec = call.config.get("recurrent_activation", call.config.get("inner_activation"))
    return act, activations.get(spec or default_recurrent, call.keras_major)


def _bias(call: Call, width: int) -> np.ndarray:
    if call.get("use_bias", True) is False:
        return np.zeros(width, np.float32)
    b = call.optional("bias")
    return np.zeros(width, np.float32) if b is None else b


def _cudnn(call: Call, kernel: np.ndarray, recurrent: np.ndarray, bias: np.ndarray, gates: int):
    """CuDNN layers store input and recurrent biases separately (sum them for LSTM) and
    per-gate kernels in cuDNN's element order."""
    if bias.shape[-1] == 2 * kernel.shape[-1] and bias.ndim == 1 and gates == 4:
        bias = bias[: bias.size // 2] + bias[bias.size // 2 :]
    elif bias.ndim == 1 and bias.shape[0] == 2 * kernel.shape[-1]:
        bias = bias.reshape(2, -1)
    return (
        from_cudnn(kernel, "kernel", gates),
        from_cudnn(recurrent, "recurrent_kernel", gates),
        bias,
    )


def _sequence(call: Call, x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32, copy=False)
    return x[:, ::-1] if call.get("go_backwards", False) else x


def _outputs(call: Call, seq: list[np.ndarray], states: list[np.ndarray]) -> Arrays:
    out = np.stack(seq, axis=1) if call.get("return_sequences", False) else seq[-1]
    return [out, *states] if call.get("return_state", False) else [out]


@layer("SimpleRNN")
def simple_rnn(call: Call, xs: Arrays) -> Arrays:
    x = _sequence(call, xs[0])
    act, _ = _acts(call, "sigmoid")
    u = call.weight("recurrent_kernel")
    proj = x @ call.weight("kernel") + _bias(call, u.shape[1])
    h = np.zeros((x.shape[0], u.shape[1]), np.float32)
    seq = []
    for t in range(x.shape[1]):
        h = act(proj[:, t] + h @ u).astype(np.float32)
        seq.append(h)
    return _outputs(call, seq, [h])


@layer("LSTM", "CuDNNLSTM")
def lstm(call: Call, xs: Arrays) -> Arrays:
    x = _sequence(call, xs[0])
    act, ract = _acts(call, "hard_sigmoid" if call.keras_major <= 2 else "sigmoid")
    if call.class_name == "CuDNNLSTM":
        act, ract = np.tanh, activations.sigmoid
    k, u = call.weight("kernel"), call.weight("recurrent_kernel")
    b = _bias(call, k.shape[1]) if call.class_name == "LSTM" else call.weight("bias")
    if call.class_name == "CuDNNLSTM":
        k, u, b = _cudnn(call, k, u, b, 4)
    n = u.shape[0]
    proj = x @ k + b
    h = np.zeros((x.shape[0], n), np.float32)
    c = np.zeros_like(h)
    seq = []
    for t in range(x.shape[1]):
        z = proj[:, t] + h @ u
        i, f, g, o = (
            ract(z[:, :n]),
            ract(z[:, n : 2 * n]),
            act(z[:, 2 * n : 3 * n]),
            ract(z[:, 3 * n :]),
        )
        c = (f * c + i * g).astype(np.float32)
        h = (o * act(c)).astype(np.float32)
        seq.append(h)
    return _outputs(call, seq, [h, c])


@layer("GRU", "CuDNNGRU")
def gru(call: Call, xs: Arrays) -> Arrays:
    x = _sequence(call, xs[0])
    act, ract = _acts(call, "hard_sigmoid" if call.keras_major <= 2 else "sigmoid")
    k, u = call.weight("kernel"), call.weight("recurrent_kernel")
    cudnn = call.class_name == "CuDNNGRU"
    b = call.weight("bias") if cudnn else _bias(call, k.shape[1])
    if cudnn:
        act, ract = np.tanh, activations.sigmoid
        k, u, b = _cudnn(call, k, u, b, 3)
    n = u.shape[0]
    reset_after = cudnn or bool(call.get("reset_after", b.ndim == 2))
    if b.ndim == 1 and reset_after:
        b = np.stack([b, np.zeros_like(b)])
    b_in, b_rec = (b[0], b[1]) if b.ndim == 2 else (b, np.zeros_like(b))
    proj = x @ k + b_in
    h = np.zeros((x.shape[0], n), np.float32)
    seq = []
    for t in range(x.shape[1]):
        xp = proj[:, t]
        if reset_after:
            inner = h @ u + b_rec
            z = ract(xp[:, :n] + inner[:, :n])
            r = ract(xp[:, n : 2 * n] + inner[:, n : 2 * n])
            hh = act(xp[:, 2 * n :] + r * inner[:, 2 * n :])
        else:
            inner = h @ u[:, : 2 * n]
            z = ract(xp[:, :n] + inner[:, :n])
            r = ract(xp[:, n : 2 * n] + inner[:, n:])
            hh = act(xp[:, 2 * n :] + (r * h) @ u[:, 2 * n :])
        h = (z * h + (1.0 - z) * hh).astype(np.float32)
        seq.append(h)
    return _outputs(call, seq, [h])


def _wrapped(call: Call, key: str = "layer") -> tuple[str, dict]:
    inner = call.config.get(key)
    if not isinstance(inner, dict) or not isinstance(inner.get("config"), dict):
        raise Unsupported(f"{call.class_name}: no wrapped layer in the config")
    return str(inner.get("class_name")), inner["config"]


@layer("Bidirectional")
def bidirectional(call: Call, xs: Arrays) -> Arrays:
    cls, cfg = _wrapped(call)
    back_cls, back_cfg = (
        _wrapped(call, "backward_layer")
        if call.config.get("backward_layer")
        else (cls, {**cfg, "go_backwards": not cfg.get("go_backwards", False)})
    )
    for name in (cls, back_cls):
        if name not in REGISTRY:
            raise Unsupported(f"Bidirectional: wrapped {name} is not computed")
    fwd = _listed(REGISTRY[cls](call.sub("forward", cfg, cls), xs))
    bwd = _listed(REGISTRY[back_cls](call.sub("backward", back_cfg, back_cls), xs))
    if cfg.get("return_sequences", False):
        bwd[0] = bwd[0][:, ::-1]
    mode = call.config.get("merge_mode", "concat")
    merged = {
        "concat": lambda a, b: [np.concatenate([a, b], axis=-1)],
        "sum": lambda a, b: [a + b],
        "mul": lambda a, b: [a * b],
        "ave": lambda a, b: [(a + b) / 2],
        None: lambda a, b: [a, b],
    }.get(mode)
    if merged is None:
        raise Unsupported(f"Bidirectional: merge_mode {mode!r}")
    return [*merged(fwd[0], bwd[0]), *fwd[1:], *bwd[1:]]


def _listed(result) -> Arrays:
    return list(result) if isinstance(result, list) else [result]


@layer("TimeDistributed")
def time_distributed(call: Call, xs: Arrays) -> np.ndarray:
    cls, cfg = _wrapped(call)
    if cls not in REGISTRY:
        raise Unsupported(f"TimeDistributed: wrapped {cls} is not computed")
    x = xs[0]
    b, t = x.shape[:2]
    inner = Call(cls, cfg, dict(call.weights), call.keras_major)
    y = _listed(REGISTRY[cls](inner, [x.reshape(b * t, *x.shape[2:])]))[0]
    return y.reshape(b, t, *y.shape[1:])


@layer("ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D")
def conv_lstm(call: Call, xs: Arrays) -> Arrays:
    x = _sequence(call, xs[0])
    if channels_first(call):
        x = np.moveaxis(x, 2, -1)
    act, ract = _acts(call, "hard_sigmoid" if call.keras_major <= 2 else "sigmoid")
    k, u = call.weight("kernel"), call.weight("recurrent_kernel")
    n_sp = k.ndim - 2
    _, strides, dilation = spatial_params(call, n_sp)
    b, t = x.shape[:2]
    proj = convolve(
        x.reshape(b * t, *x.shape[2:]), k, strides, dilation, call.get("padding", "valid")
    )
    proj = (proj + _bias(call, k.shape[-1])).reshape(b, t, *proj.shape[1:])
    f = u.shape[-1] // 4
    h = np.zeros((b, *proj.shape[2:-1], f), np.float32)
    c = np.zeros_like(h)
    ones = (1,) * n_sp
    seq = []
    for step in range(t):
        z = proj[:, step] + convolve(h, u, ones, ones, "same")
        i, fg, g, o = (z[..., j * f : (j + 1) * f] for j in range(4))
        c = (ract(fg) * c + ract(i) * act(g)).astype(np.float32)
        h = (ract(o) * act(c)).astype(np.float32)
        seq.append(h)
    outs = _outputs(call, seq, [h, c])
    if channels_first(call):
        outs = [np.moveaxis(o, -1, 2 if o.ndim == h.ndim + 1 else 1) for o in outs]
    return outs
