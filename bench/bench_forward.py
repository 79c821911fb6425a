"""`make bench`: the numpy forward pass of a VGG16- and a ResNet50-shaped model on a batch of 8,
against the machine's float32 GEMM throughput measured in the same run.

The models are Keras 2 Functional configs with random weights (He-scaled kernels, random
BatchNorm statistics), built in memory as the reader's records: no file, no TensorFlow. Each
model runs in a fresh child process, so its peak RSS is its own. Reported per model: the pass's
time, the time float32 GEMM would need for the same multiply-adds (at the rate a 2048³ numpy
matmul reaches in the same process just before and after the pass: the machine is shared),
their ratio (the share of GEMM throughput the pass reaches,
for the whole pass and for its convolutional layers alone), and peak RSS against the budget
(largest layer output × 4 + weights + 300 MB).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time

import numpy as np

BATCH = 8
GEMM_N = 2048


def _layer(name, cls, config, inputs):
    config = {"name": name, **config}
    return {"class_name": cls, "name": name, "config": config,
            "inbound_nodes": [[[i, 0, 0, {}] for i in inputs]] if inputs else []}  # fmt: skip


class Builder:
    """A Keras 2 functional config and random weights, layer by layer."""

    def __init__(self, shape):
        self.layers = [_layer("input", "InputLayer", {"batch_input_shape": [None, *shape],
                                                      "dtype": "float32"}, [])]  # fmt: skip
        self.weights: dict[str, dict[str, tuple]] = {}
        self.shapes = {"input": tuple(shape)}
        self.macs: dict[str, int] = {}

    def add(self, name, cls, config, inputs, weights=None, out_shape=None, macs=0):
        self.layers.append(_layer(name, cls, config, inputs))
        if weights:
            self.weights[name] = weights
        self.shapes[name] = out_shape
        self.macs[name] = macs
        return name

    def conv(self, x, name, filters, k, stride=1, padding="same", activation="linear"):
        h, w, c = self.shapes[x]
        oh = -(-h // stride) if padding == "same" else (h - k) // stride + 1
        ow = -(-w // stride) if padding == "same" else (w - k) // stride + 1
        weights = {"kernel": (k, k, c, filters), "bias": (filters,)}
        return self.add(name, "Conv2D", {"filters": filters, "kernel_size": [k, k],
                        "strides": [stride, stride], "padding": padding,
                        "activation": activation, "use_bias": True}, [x], weights,
                        (oh, ow, filters), oh * ow * k * k * c * filters)  # fmt: skip

    def bn(self, x, name):
        c = self.shapes[x][-1]
        return self.add(name, "BatchNormalization", {"axis": -1, "epsilon": 1.001e-5}, [x],
                        {r: (c,) for r in ("gamma", "beta", "moving_mean", "moving_variance")},
                        self.shapes[x])  # fmt: skip

    def relu(self, x, name):
        return self.add(name, "Activation", {"activation": "relu"}, [x], None, self.shapes[x])

    def pool(self, x, name, k, stride, padding="valid"):
        h, w, c = self.shapes[x]
        oh = (h - k) // stride + 1 if padding == "valid" else -(-h // stride)
        ow = (w - k) // stride + 1 if padding == "valid" else -(-w // stride)
        return self.add(name, "MaxPooling2D", {"pool_size": [k, k], "strides": [stride, stride],
                        "padding": padding}, [x], None, (oh, ow, c))  # fmt: skip

    def dense(self, x, name, units, activation):
        n = int(np.prod(self.shapes[x]))
        return self.add(name, "Dense", {"units": units, "activation": activation}, [x],
                        {"kernel": (n, units), "bias": (units,)}, (units,), n * units)  # fmt: skip

    def config(self, outputs):
        return {"class_name": "Functional", "config": {"name": "bench", "layers": self.layers,
                "input_layers": [["input", 0, 0]],
                "output_layers": [[o, 0, 0] for o in outputs]}}  # fmt: skip


def vgg16() -> Builder:
    b = Builder((224, 224, 3))
    x = "input"
    for block, (n, f) in enumerate([(2, 64), (2, 128), (3, 256), (3, 512), (3, 512)], start=1):
        for i in range(1, n + 1):
            x = b.conv(x, f"block{block}_conv{i}", f, 3, activation="relu")
        x = b.pool(x, f"block{block}_pool", 2, 2)
    x = b.add("flatten", "Flatten", {}, [x], None, (int(np.prod(b.shapes[x])),))
    x = b.dense(x, "fc1", 4096, "relu")
    x = b.dense(x, "fc2", 4096, "relu")
    x = b.dense(x, "predictions", 1000, "softmax")
    b.out = [x]
    return b


def resnet50() -> Builder:
    b = Builder((224, 224, 3))
    x = b.add("pad1", "ZeroPadding2D", {"padding": [[3, 3], [3, 3]]}, ["input"], None,
              (230, 230, 3))  # fmt: skip
    x = b.conv(x, "conv1", 64, 7, 2, "valid")
    x = b.relu(b.bn(x, "conv1_bn"), "conv1_relu")
    h, w, c = b.shapes[x]
    x = b.add("pad2", "ZeroPadding2D", {"padding": [[1, 1], [1, 1]]}, [x], None,
              (h + 2, w + 2, c))  # fmt: skip
    x = b.pool(x, "pool1", 3, 2)
    for stage, (blocks, f, stride) in enumerate(
        [(3, 64, 1), (4, 128, 2), (6, 256, 2), (3, 512, 2)], start=2
    ):
        for k in range(1, blocks + 1):
            p = f"conv{stage}_block{k}"
            s = stride if k == 1 else 1
            short = b.bn(b.conv(x, f"{p}_0_conv", 4 * f, 1, s), f"{p}_0_bn") if k == 1 else x
            y = b.relu(b.bn(b.conv(x, f"{p}_1_conv", f, 1, s), f"{p}_1_bn"), f"{p}_1_relu")
            y = b.relu(b.bn(b.conv(y, f"{p}_2_conv", f, 3), f"{p}_2_bn"), f"{p}_2_relu")
            y = b.bn(b.conv(y, f"{p}_3_conv", 4 * f, 1), f"{p}_3_bn")
            y = b.add(f"{p}_add", "Add", {}, [short, y], None, b.shapes[y])
            x = b.relu(y, f"{p}_out")
    x = b.add("avg_pool", "GlobalAveragePooling2D", {}, [x], None, (b.shapes[x][-1],))
    b.out = [b.dense(x, "predictions", 1000, "softmax")]
    return b


def model_records(b: Builder):
    from wpipe.readers.base import Layer, Model, Tensor

    rng = np.random.default_rng(0)
    layers = []
    for name, weights in b.weights.items():
        tensors = []
        for role, shape in weights.items():
            fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
            # generated in place: the bench's own copies would count in the pass's peak RSS
            arr = rng.standard_normal(shape, dtype=np.float32)
            if role == "kernel":
                arr *= np.float32(np.sqrt(2.0 / fan_in))
            elif role in ("gamma", "moving_variance"):
                np.abs(arr, out=arr)
                arr *= np.float32(0.3)
                arr += np.float32(0.7)
            else:
                arr *= np.float32(0.05)
            tensors.append(Tensor(role, role, True, name, shape, "float32", lambda a=arr: a))
        layers.append(Layer(name, name, "", {}, True, tensors))
    return Model("bench", "h5-model", "2.15.0", "tensorflow", "Functional", None, None, layers,
                 model_config=json.dumps(b.config(b.out)))  # fmt: skip


def gemm_rate() -> float:
    """float32 multiply-adds per second of a large square matmul (best of 3)."""
    rng = np.random.default_rng(1)
    a = rng.standard_normal((GEMM_N, GEMM_N), dtype=np.float32)
    c = rng.standard_normal((GEMM_N, GEMM_N), dtype=np.float32)
    a @ c  # warm-up
    best = min(_timed(lambda: a @ c) for _ in range(3))
    return GEMM_N**3 / best


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def child(which: str) -> None:
    from wpipe.forward import LayerOutput, forward

    b = {"vgg16": vgg16, "resnet50": resnet50}[which]()
    model = model_records(b)
    weight_bytes = sum(t.size * 4 for layer in model.layers for t in layer.tensors)
    x = np.random.default_rng(2).standard_normal((BATCH, 224, 224, 3), dtype=np.float32)
    rate_before = gemm_rate()  # the machine is shared: measure GEMM beside the pass
    largest = 0
    per_layer: dict[str, float] = {}
    start = last = time.perf_counter()
    for rec in forward(model, [x]):
        now = time.perf_counter()
        if isinstance(rec, LayerOutput):
            per_layer[rec.layer_path] = now - last
            largest = max(largest, rec.array.nbytes)
        else:
            raise SystemExit(f"stopped at {rec.layer_path}: {rec.reason}")
        last = now
    total = time.perf_counter() - start
    rate = (rate_before + gemm_rate()) / 2
    conv = [n for n, m in b.macs.items() if m and n in per_layer and "conv" in n]
    print(json.dumps({
        "seconds": total,
        "macs": BATCH * sum(b.macs.values()),
        "conv_seconds": sum(per_layer[n] for n in conv),
        "conv_macs": BATCH * sum(b.macs[n] for n in conv),
        "largest_output": largest,
        "weights": weight_bytes,
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "gemm_rate": rate,
    }))  # fmt: skip


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child(sys.argv[2])
        return
    print(f"{'model':10} {'pass':>8} {'GEMM eq.':>9} {'share':>6} {'conv share':>10} "
          f"{'peak RSS':>9} {'budget':>8} {'GEMM rate':>10}")  # fmt: skip
    for which in ("vgg16", "resnet50"):
        done = subprocess.run([sys.executable, __file__, "--child", which], capture_output=True,
                              text=True, check=True)  # fmt: skip
        r = json.loads(done.stdout.strip().splitlines()[-1])
        rate = r["gemm_rate"]
        gemm = r["macs"] / rate
        conv_share = (r["conv_macs"] / rate) / r["conv_seconds"]
        budget = r["largest_output"] * 4 + r["weights"] + (300 << 20)
        print(f"{which:10} {r['seconds']:7.2f}s {gemm:8.2f}s {gemm / r['seconds']:6.0%} "
              f"{conv_share:10.0%} {r['peak_rss'] / 2**20:7.0f}MB {budget / 2**20:6.0f}MB "
              f"{rate / 1e9:6.1f} GMAC/s",
              flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
