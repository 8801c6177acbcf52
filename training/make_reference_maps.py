"""Store the first maps of a held-out test set for tests/test_shipped_checkpoint.py.

``python -m training.make_reference_maps [N]`` writes ``tests/data/jam_reference.npz`` (paper box,
``data/test``, seed 3) and ``tests/data/jam_reference_real_lens.npz`` (real-lens space,
``data/rl_test``, seed 13) from whichever of the two test sets exists.
"""

import sys
from pathlib import Path

import numpy as np
from skinn_jax.training.train import load_maps

REFERENCES = {"data/test": "jam_reference.npz", "data/rl_test": "jam_reference_real_lens.npz"}

if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 4
    for test_set, name in REFERENCES.items():
        if not Path(test_set).exists():
            continue
        params, vrms, n_zero = load_maps(test_set, n)
        np.savez_compressed(
            Path("tests/data") / name, params=params, vrms=vrms.reshape(n, 276, 276), n_zero=n_zero
        )
