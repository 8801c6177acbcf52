"""Joint lensing + time-delay + kinematics inference, as a library of composable blocks.

Layers (imports run one way; ``docs/architecture.md``, "Inference module graph"):

- :mod:`.data` (your data, ``SystemData``), :mod:`.priors`, :mod:`.convergence`;
- :mod:`.lensing` (profiles, imaging, the one lens-equation solver), :mod:`.kinematics` (the
  emulator's v_rms field);
- :mod:`.blocks` (kinematics-only models with your own priors) and :mod:`.model` (the joint model
  composed of blocks, one per-mode table);
- :mod:`.predict` (predictions by tracing the model);
- :mod:`.fit` (MAP with optax's L-BFGS, Laplace metric, NUTS, report);
- :mod:`.mocks` (mock systems from JAM truth: the only importer of ``training.jam``) and
  :mod:`.study` (the K-system study), which the library itself never imports.
"""
