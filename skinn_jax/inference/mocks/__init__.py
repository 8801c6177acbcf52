"""Mock lens systems from JAM truth (paper Sec. 5.2): the only importer of ``training.jam``.

- :mod:`.kinematics`: seeded mock IFU data from JAM truth, JAM truth as a tabulated field;
- :mod:`.system`: seeded mock lens systems (imaging, time delays, kinematics);
- :mod:`.truth`: a mock's true values in the model's coordinates, the solver start at the truth;
- :mod:`.fit`: fit one mock system (the one path of ``skinn-jax fit-mock`` and the study).

The library (data, priors, lensing, kinematics, model, predict, fit) never imports this package.
"""
