# Environment used to write the committed zoo (a venv outside the repo):
#   python3 -m venv /work/kerasvenv
#   /work/kerasvenv/bin/pip install "tensorflow==2.21.0" "tf_keras==2.21.0" h5py numpy
#   (brings keras 3.15.1, h5py 3.14.0, numpy 2.4.6)
# Run from the repo root (about two minutes on 2 CPU cores):
#   /work/kerasvenv/bin/python examples/make_zoo.py
"""Train a small demo zoo of Keras models on synthetic data and save them into examples/models/.

* cnn_lr1e-3/, cnn_lr1e-2/, cnn_lr3e-1/: the same small CNN (same initial weights) trained for
  5 epochs with Adam at three learning rates, saved after every epoch by ModelCheckpoint as
  full legacy .h5 models (e01.h5 ... e05.h5) by tf_keras (Keras 2), plus CSVLogger history.csv.
  The 0.3 run is deliberately too high: its weights blow up and ReLU units die.
* lstm_classifier.h5, gru_classifier.h5: Embedding -> LSTM/GRU -> Dense sequence classifiers,
  saved as legacy .h5 by Keras 3 (TensorFlow backend), so the zoo holds both writers.

Each writer runs in its own subprocess so tf_keras and Keras 3 never share a process.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "models"
SEED = 2024

CNN_RUNS = [("cnn_lr1e-3", 1e-3), ("cnn_lr1e-2", 1e-2), ("cnn_lr3e-1", 0.3)]
CNN_EPOCHS = 5
IMG = 16
N_CLASSES = 4


def blob_images(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """16x16x1 images; the class is the quadrant holding a bright Gaussian blob, plus noise."""
    y = rng.integers(0, N_CLASSES, size=n)
    yy, xx = np.mgrid[0:IMG, 0:IMG]
    half = IMG // 2
    cy = (y // 2) * half + rng.uniform(1.5, half - 1.5, size=n)
    cx = (y % 2) * half + rng.uniform(1.5, half - 1.5, size=n)
    sigma = rng.uniform(1.0, 2.0, size=n)
    d2 = (yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2
    img = np.exp(-d2 / (2 * sigma[:, None, None] ** 2))
    img += rng.normal(0.0, 0.35, size=img.shape)
    return img[..., None].astype("float32"), y.astype("int32")


def token_sequences(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Length-20 token sequences over a vocabulary of 100; class 1 draws mostly low tokens."""
    y = rng.integers(0, 2, size=n)
    low = rng.integers(1, 60, size=(n, 20))
    high = rng.integers(40, 100, size=(n, 20))
    x = np.where(y[:, None] == 1, low, high)
    noise = rng.random(size=x.shape) < 0.15  # some fully random tokens
    x = np.where(noise, rng.integers(1, 100, size=x.shape), x)
    return x.astype("int32"), y.astype("int32")


def make_cnn(K):
    return K.Sequential(
        [
            K.Input(shape=(IMG, IMG, 1)),
            K.layers.Conv2D(8, (5, 5), padding="same", activation="relu", name="conv1"),
            K.layers.MaxPooling2D(2, name="pool1"),
            K.layers.Conv2D(16, (5, 5), padding="same", activation="relu", name="conv2"),
            K.layers.GlobalAveragePooling2D(name="gap"),
            K.layers.Dense(16, activation="relu", name="fc"),
            K.layers.Dense(N_CLASSES, activation="softmax", name="probs"),
        ],
        name="blob_cnn",
    )


def run_cnn() -> None:
    import tf_keras as K

    rng = np.random.default_rng(SEED)
    x, y = blob_images(2048, rng)
    xv, yv = blob_images(512, rng)
    for run, lr in CNN_RUNS:
        K.backend.clear_session()
        K.utils.set_random_seed(SEED)  # same initial weights for every learning rate
        model = make_cnn(K)
        model.compile(
            optimizer=K.optimizers.Adam(learning_rate=lr),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
        d = OUT / run
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        callbacks = [
            K.callbacks.ModelCheckpoint(str(d / "e{epoch:02d}.h5"), save_weights_only=False),
            K.callbacks.CSVLogger(str(d / "history.csv")),
        ]
        hist = model.fit(
            x,
            y,
            validation_data=(xv, yv),
            epochs=CNN_EPOCHS,
            batch_size=64,
            callbacks=callbacks,
            verbose=0,
        )
        acc = hist.history["val_accuracy"][-1]
        print(
            f"[tf_keras {K.__version__}] {run}: {model.count_params()} params, "
            f"val_accuracy {acc:.3f}",
            flush=True,
        )


def make_rnn(K, kind: str):
    rnn = K.layers.LSTM(16, name="lstm") if kind == "lstm" else K.layers.GRU(16, name="gru")
    return K.Sequential(
        [
            K.Input(shape=(20,), dtype="int32"),
            K.layers.Embedding(100, 8, name="embed"),
            rnn,
            K.layers.Dense(2, activation="softmax", name="probs"),
        ],
        name=f"{kind}_classifier",
    )


def run_rnn() -> None:
    os.environ["KERAS_BACKEND"] = "tensorflow"
    import keras as K

    rng = np.random.default_rng(SEED + 1)
    x, y = token_sequences(2000, rng)
    xv, yv = token_sequences(400, rng)
    for kind in ("lstm", "gru"):
        K.backend.clear_session()
        K.utils.set_random_seed(SEED + 1)
        model = make_rnn(K, kind)
        model.compile(
            optimizer=K.optimizers.Adam(learning_rate=1e-2),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
        hist = model.fit(x, y, validation_data=(xv, yv), epochs=3, batch_size=64, verbose=0)
        path = OUT / f"{kind}_classifier.h5"
        if path.exists():
            path.unlink()
        model.save(str(path))  # .h5 suffix: Keras 3 writes the legacy HDF5 format
        acc = hist.history["val_accuracy"][-1]
        print(
            f"[keras {K.__version__}] {path.name}: {model.count_params()} params, "
            f"val_accuracy {acc:.3f}",
            flush=True,
        )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("cnn", "rnn"):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        warnings.filterwarnings("ignore")
        OUT.mkdir(parents=True, exist_ok=True)
        run_cnn() if sys.argv[1] == "cnn" else run_rnn()
        return
    for part in ("cnn", "rnn"):
        subprocess.run([sys.executable, __file__, part], check=True)


if __name__ == "__main__":
    main()
