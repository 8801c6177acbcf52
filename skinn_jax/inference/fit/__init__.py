"""Inference for :func:`skinn_jax.inference.model.model`: MAP, Laplace metric, NUTS, outputs.

- :mod:`.settings`: :class:`FitSettings`, :class:`FitResult`, shared I/O helpers;
- :mod:`.map`: NumPyro's potential, the MAP (optax L-BFGS) and the Laplace metric;
- :mod:`.driver`: :func:`fit`, the checkpointed MAP -> warm-up -> sampling run;
- :mod:`.report`: the posterior table, convergence verdict, ArviZ data, figures, Markdown.
"""

from .driver import (
    OutputExistsError,
    chain_ms_per_evaluation,
    fingerprint,
    fit,
    prepare_out_dir,
)
from .map import (
    PRIOR_VARIANCE,
    MapResult,
    Potential,
    cap_variance,
    find_map,
    make_potential,
    parameter_boxes,
    regularised_inverse,
    time_evaluation,
    whitened_covariance,
)
from .report import (
    DERIVED_SUMMARY,
    assess_draws,
    diagnostics,
    load_result,
    plot_corner,
    plot_fit,
    remove_outputs,
    reported_names,
    summary_table,
    to_inference_data,
    write_outputs,
)
from .settings import (
    FINAL_FILES,
    STATE_FILE,
    FitResult,
    FitSettings,
    default_settings,
    use_compilation_cache,
)

__all__ = [
    "DERIVED_SUMMARY",
    "FINAL_FILES",
    "PRIOR_VARIANCE",
    "STATE_FILE",
    "FitResult",
    "FitSettings",
    "MapResult",
    "OutputExistsError",
    "Potential",
    "assess_draws",
    "cap_variance",
    "chain_ms_per_evaluation",
    "default_settings",
    "diagnostics",
    "find_map",
    "fingerprint",
    "fit",
    "load_result",
    "make_potential",
    "parameter_boxes",
    "plot_corner",
    "plot_fit",
    "prepare_out_dir",
    "regularised_inverse",
    "remove_outputs",
    "reported_names",
    "summary_table",
    "time_evaluation",
    "to_inference_data",
    "use_compilation_cache",
    "whitened_covariance",
    "write_outputs",
]
