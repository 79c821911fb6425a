# Run from the repo root (numpy only, a second):  python examples/make_inputs.py
"""Sample inputs for `wpipe activations` in the demo, drawn like the zoo's training data.

* inputs/blobs.npy: 256 images 16x16x1 from make_zoo.blob_images (the CNN runs' task),
* inputs/tokens.npy: 256 token sequences of length 20 from make_zoo.token_sequences (LSTM/GRU).
Seeds differ from the training and validation draws, so these are held-out samples.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from make_zoo import SEED, blob_images, token_sequences  # noqa: E402

N = 256


def main() -> None:
    out = HERE / "inputs"
    out.mkdir(exist_ok=True)
    images, _ = blob_images(N, np.random.default_rng(SEED + 100))
    tokens, _ = token_sequences(N, np.random.default_rng(SEED + 101))
    np.save(out / "blobs.npy", images)
    np.save(out / "tokens.npy", tokens)
    print(f"wrote {out}/blobs.npy {images.shape}, {out}/tokens.npy {tokens.shape}")


if __name__ == "__main__":
    main()
