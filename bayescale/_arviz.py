"""Import ArviZ once, quietly: 0.23 prints a FutureWarning about its 1.x refactor at import.

bayescale writes to the 0.23 API (InferenceData, from_numpyro, hdi, loo, to_netcdf); ArviZ 1.x
needs Python >= 3.12. Keeping the import here leaves one place to change when the platform moves.
"""

from __future__ import annotations

import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    import arviz as az

__all__ = ["az"]
