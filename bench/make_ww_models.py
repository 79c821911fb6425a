"""Dev-only: VGG16- and ResNet50-shaped Keras files (keras.applications, random initial
weights) for bench/compare_weightwatcher.py. Run in a virtualenv with TensorFlow and Keras:

    /work/venvs/tf/bin/python bench/make_ww_models.py bench/_data/ww
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras


def main(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(0)
    for name, build in (("vgg16", keras.applications.VGG16),
                        ("resnet50", keras.applications.ResNet50)):  # fmt: skip
        target = folder / f"{name}.h5"
        if not target.exists():
            build(weights=None).save(target)  # the legacy HDF5 layout
        print(target)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "bench/_data/ww"))
