"""bayescale: Bayesian scaling-law inference for neural language models.

The public API is re-exported here. JAX and NumPyro are imported on first use of a function
that needs them, so ``import bayescale`` and ``bayescale --help`` stay fast.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

from .errors import InputError
from .runs import load_runs, write_run_record

_LAZY = {
    "fit": "inference",
    "FitConfig": "inference",
    "load_posterior": "inference",
    "save_posterior": "inference",
    "diagnostics": "inference",
    "optimal": "posterior",
    "predict": "posterior",
    "param_draws": "posterior",
    "group_view": "store",
    "groups_of": "store",
}

__all__ = [
    "FitConfig",
    "InputError",
    "__version__",
    "diagnostics",
    "fit",
    "group_view",
    "groups_of",
    "load_posterior",
    "load_runs",
    "optimal",
    "param_draws",
    "predict",
    "save_posterior",
    "write_run_record",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'bayescale' has no attribute {name!r}")
