"""Store the first maps of the held-out test set for tests/test_shipped_checkpoint.py."""

import sys

import numpy as np
from skinn_jax.training.train import load_maps

if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 4
    params, vrms, n_zero = load_maps("data/test", n)
    np.savez_compressed(
        "tests/data/jam_reference.npz", params=params, vrms=vrms.reshape(n, 276, 276), n_zero=n_zero
    )
