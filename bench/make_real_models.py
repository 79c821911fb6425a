"""Generate the bench's real-architecture case: keras.applications models with random
initial weights (weights=None: nothing is downloaded), saved by Keras itself.

Run in a Python that has TensorFlow/Keras (not a wpipe dependency):
    /work/venvs/tf/bin/python bench/make_real_models.py bench/_data/real
`make bench` skips the case when the folder is absent.
"""

from __future__ import annotations

import sys
from pathlib import Path

import keras

# (constructor, file name): legacy .h5 and native .keras, small to mid-size
MODELS = [
    ("MobileNetV2", "mobilenet_v2.keras"),
    ("DenseNet121", "densenet121.h5"),
    ("ResNet50", "resnet50.keras"),
    ("EfficientNetB0", "efficientnet_b0.h5"),
]


def main(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, file_name in MODELS:
        target = folder / file_name
        if target.exists():
            continue
        keras.utils.set_random_seed(0)
        model = getattr(keras.applications, name)(weights=None)
        model.save(target)
        print(f"{target}: {target.stat().st_size / 1e6:.1f} MB, {model.count_params():,} params")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "bench/_data/real"))
