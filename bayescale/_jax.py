"""Configure JAX once, before any array is made: float64, and a persistent compilation cache.

float64: the closed-form allocations and log-space laws lose digits in float32 (log N ~ 25
leaves ~1e-6 relative precision in N), and NUTS on a few hundred points costs no more for it.

The compilation cache lets a second ``bayescale fit`` of same-shaped data in a new process skip
XLA compilation (most of a cold fit's time). Its folder is ``$BAYESCALE_JAX_CACHE`` or
``~/.cache/bayescale/jax``; set ``BAYESCALE_JAX_CACHE=off`` to disable it.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)


def cache_dir() -> Path | None:
    """The persistent compilation cache folder, or None when disabled."""
    env = os.environ.get("BAYESCALE_JAX_CACHE")
    if env is not None and env.strip().lower() in ("", "0", "off", "none", "false"):
        return None
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "bayescale" / "jax"


_dir = cache_dir()
if _dir is not None:
    try:
        _dir.mkdir(parents=True, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", str(_dir))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    except OSError:  # a read-only home must not stop a fit; it only makes it slower
        pass
