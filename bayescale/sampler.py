"""NUTS compiled once per model structure, with the data, the priors' numbers and the pivots as
arguments.

Why: a law-averaged fit refits every law on several forward-validation cuts, ``check --sbc``
refits hundreds of simulated tables, and the design loop refits after every batch. NumPyro's
``MCMC.run`` traces and lowers its sampler again on every call (about a second each here). A
:class:`CompiledNUTS` is built once for a (law, prior families, likelihood, padded size,
sampler options) key and then runs any table of up to that many runs: the table is padded to a
bucketed size and a mask keeps the padding (or the runs a forward-validation cut leaves out)
out of the likelihood.

Chains run in parallel, one per XLA CPU device, where JAX has a device per chain (see
:data:`bayescale._jax.HOST_DEVICES`), and vectorised otherwise.

Progress: a key with ``progress=True`` compiles a host callback into the sampling loop that
reports each chain's iteration and divergences to a :class:`ProgressBar` about every 2% of the
iterations. Only then: JAX's persistent compilation cache does not store executables with host
callbacks, and a warm new-process fit owes most of its speed to that cache, so the program
without progress (tests, pipes, ``--json``) is exactly the one compiled before progress existed.
"""

from __future__ import annotations

import math
import os
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, TextIO

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import block_diag
from numpyro.infer.hmc import hmc
from numpyro.infer.util import constrain_fn, potential_energy

from . import _jax  # noqa: F401  (float64, host devices, compilation cache)
from .models import SAMPLING_COORDS, Pooling, PriorForm, initial_point, law_model

MIN_BUCKET = 16

#: NUTS moves in the sampling coordinates times this factor. NumPyro (like Stan) regularises each
#: adapted mass matrix by adding ``1e-3 * 5 / (n + 5)`` to every coordinate's variance: an absolute
#: floor, meant for coordinates of unit scale. Ours are not: the log loss at the pivots (``l0``) is
#: fixed by the data to about sigma / sqrt(runs), a posterior sd of 5e-4 on the 240 Chinchilla rows
#: (variance 2.6e-7, 40x below the floor of the last window), so the adapted mass was 6x too wide
#: along it, the step size 0.1 and NUTS took 32 leapfrog steps per draw. Scaled by 100 the floor
#: is 1e4 times smaller against every posterior variance (still there for a window whose chain
#: did not move): the same posterior, 6 steps per draw. Positions, mass matrices and step sizes
#: that leave or enter the sampler (:class:`WarmStart`) stay in the unscaled coordinates.
COORD_SCALE = 100.0


def bucket(n: int) -> int:
    """Padded size for ``n`` runs: the next power of two (at least :data:`MIN_BUCKET`).

    A growing table (a design loop, forward-validation cuts) then recompiles only when it
    crosses a power of two, at the cost of at most twice the likelihood terms.
    """
    return max(MIN_BUCKET, 1 << max(0, math.ceil(math.log2(max(n, 1)))))


def chain_method(chains: int) -> str:
    """Parallel chains where JAX has a CPU device per chain, else vectorised.

    Both are deterministic for a given seed; they draw different (equally valid) numbers.
    """
    if chains > 1 and jax.default_backend() == "cpu" and jax.local_device_count() >= chains:
        return "parallel"
    return "vectorized"


@dataclass(frozen=True)
class SamplerKey:
    """Everything that fixes the compiled program; numbers that vary between fits are not here."""

    law: str
    forms: tuple[tuple[str, PriorForm], ...]
    likelihood: str
    nu: float
    size: int  # padded number of runs
    chains: int
    warmup: int
    draws: int
    target_accept: float
    max_tree_depth: int
    dense_mass: bool
    batched: bool = False  # each chain fits its own table (simulation-based calibration), one chain each
    pooling: Pooling | None = None  # a grouped table: how parameters vary across its groups
    measurement: bool = False  # runs carry measurement standard errors of their log loss
    progress: bool = False  # report iterations and divergences to the host (not persistently cacheable)


@dataclass
class Draws:
    """What one run of the sampler returns, as host arrays of shape ``(chains, draws, ...)``."""

    samples: dict[str, np.ndarray]  # sampled sites (constrained) and deterministic sites
    diverging: np.ndarray
    num_steps: np.ndarray
    chain_method: str
    adapted: WarmStart  # where each chain ended and what it adapted: a later fit can start there


@dataclass
class WarmStart:
    """Where chains start and the adaptation they start from, per chain.

    A refit of a similar posterior (the same law on a subset of the runs, or on a few more runs)
    started from the last fit's positions, mass matrix and step size skips the expensive first
    iterations of warm-up, when the step size is still far off and trajectories hit the tree
    depth cap; the warm-up that follows still adapts both to the new posterior.
    """

    position: np.ndarray  # (chains, k), sampling coordinates
    inverse_mass_matrix: np.ndarray  # (chains, k, k)
    step_size: np.ndarray  # (chains,)


#: environment variable that forces the progress display on (1) or off (0) whatever stderr is;
#: tests use it to show progress as a terminal would
PROGRESS_ENV = "BAYESCALE_PROGRESS"
#: the sampling loop reports to the host about this many times per chain (plus at the end of warm-up)
PROGRESS_UPDATES = 50
#: name of the chain axis under pmap/vmap, so a chain can say which one it is
CHAIN_AXIS = "chain"


def progress_enabled(quiet: bool, stream: TextIO | None = None) -> bool:
    """Whether to show sampling progress: never when ``quiet``; else as :data:`PROGRESS_ENV` says,
    or, when it is unset, when ``stream`` (default stderr) is a terminal."""
    if quiet:
        return False
    env = os.environ.get(PROGRESS_ENV, "").strip().lower()
    if env:
        return env not in ("0", "off", "no", "false")
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or unusual stream: no terminal
        return False


class ProgressBar:
    """One line on a terminal, rewritten in place (``\\r``), showing how far NUTS has got.

    Chains report ``(chain, iterations done, divergences in warm-up, divergences in sampling)``
    from inside the compiled loop (:meth:`update`), in any order and from several threads (one
    per device when chains run in parallel). The line shows the slowest chain, since the fit
    waits for it, and the divergences of all chains in the phase it is in.
    """

    WIDTH = 20  # characters of the bar

    def __init__(self, label: str, *, chains: int, warmup: int, draws: int, stream: TextIO | None = None) -> None:
        self.label, self.chains, self.warmup, self.draws = label, chains, warmup, draws
        self.stream = sys.stderr if stream is None else stream
        self.iters = np.zeros(chains, int)
        self.divergences = np.zeros((chains, 2), int)  # (warm-up, sampling) per chain
        self._lock = threading.Lock()
        self._shown = ""

    def update(self, chain: int, iteration: int, div_warmup: int, div_sampling: int) -> None:
        """Record a chain's report and redraw the line if it changed."""
        with self._lock:
            c = int(chain)
            # reports of one chain can arrive out of order: keep the furthest
            self.iters[c] = max(self.iters[c], int(iteration))
            self.divergences[c] = np.maximum(self.divergences[c], [int(div_warmup), int(div_sampling)])
            line = self.line()
            if line != self._shown:
                self.stream.write("\r" + line.ljust(len(self._shown)))
                self.stream.flush()
                self._shown = line

    def line(self) -> str:
        """The text shown now: stage, phase, bar, the slowest chain's count, divergences so far."""
        slow = int(self.iters.min())
        if slow < self.warmup:
            phase, done, total, div = "warm-up", slow, self.warmup, int(self.divergences[:, 0].sum())
        else:
            phase, done, total, div = "sampling", slow - self.warmup, self.draws, int(self.divergences[:, 1].sum())
        filled = int(self.WIDTH * done / total)
        chains = f"{self.chains} chains" if self.chains > 1 else "1 chain"
        return (f"{self.label}: {phase:<8} [{'#' * filled}{'.' * (self.WIDTH - filled)}] {done}/{total} "
                f"({chains}), {div} divergent")

    def close(self) -> None:
        """End the line, so that what is printed next starts on its own."""
        with self._lock:
            if self._shown:
                self.stream.write("\n")
                self.stream.flush()
                self._shown = ""


_ACTIVE: ProgressBar | None = None  # the bar of the sampler running now (one at a time)


def _report(chain: Any, iteration: Any, divergences: Any) -> None:
    """Host side of the progress callback: hand a chain's numbers to the active bar."""
    bar = _ACTIVE
    if bar is not None:
        div = np.asarray(divergences)
        bar.update(int(chain), int(iteration), int(div[0]), int(div[1]))


class CompiledNUTS:
    """NUTS for one :class:`SamplerKey`, traced and compiled on first use, then reused."""

    def __init__(self, key: SamplerKey) -> None:
        self.key = key
        self.method = chain_method(key.chains)
        forms = dict(key.forms)
        model = partial(law_model, law=key.law, forms=forms, likelihood=key.likelihood, nu=key.nu,
                        pooling=key.pooling)
        unscale = partial(jax.tree.map, lambda v: v / COORD_SCALE)  # sampler's coordinates -> the model's

        def potential_fn_gen(*args: Any) -> Any:
            return lambda v: potential_energy(model, args, {}, unscale(v))

        init_kernel, sample_kernel = hmc(potential_fn_gen=potential_fn_gen, algo="NUTS")

        k_pop = len(SAMPLING_COORDS[key.law])
        grouped = key.pooling is not None
        # A grouped model's group coordinates (site "h") get a diagonal mass block of their own
        # beside the population's dense one. One dense matrix over every coordinate costs a
        # k x k product per leapfrog step: with 24 Gadre groups (156 coordinates) a step cost
        # about 200 us, against 45 us with a diagonal mass throughout. With one factor, centred
        # and separate coordinates are the groups' own values (models._absolute). With crossed
        # factors, centred effects and separate parameters are offsets from the population's
        # coordinates, which only a dense matrix over both undoes: one dense block, as before
        # the blocks existed.
        if not grouped:
            blocks = None
        elif not key.dense_mass:
            blocks = []
        elif key.pooling.n_factors > 1:
            blocks = [("u", "h")]
        else:
            blocks = [("u",)]

        def split(z: jax.Array) -> dict:
            return {"u": z[:k_pop], "h": z[k_pop:]} if grouped else {"u": z}

        def mass_in(inv: jax.Array) -> Any:
            """A (K, K) inverse mass matrix -> what the kernel takes."""
            if blocks is None:
                return inv
            if blocks == [("u", "h")]:
                return {("u", "h"): inv}
            u = inv[:k_pop, :k_pop] if blocks else jnp.diagonal(inv)[:k_pop]
            return {("u",): u, ("h",): jnp.diagonal(inv)[k_pop:]}

        def mass_out(inv: Any) -> jax.Array:
            """What the kernel adapted -> a (K, K) inverse mass matrix (a later fit's start)."""
            if blocks is None:
                return inv
            if blocks == [("u", "h")]:
                return inv[("u", "h")]
            u = inv[("u",)]
            return block_diag(u if u.ndim == 2 else jnp.diag(u), jnp.diag(inv[("h",)]))

        def one_chain(rng: jax.Array, args: tuple, start: tuple) -> tuple:
            given, u0, inv_mass, step = start
            rng_init, rng_nuts = jax.random.split(rng)
            z0 = split(COORD_SCALE * jnp.where(given, u0, initial_point(key.law, forms, args[-1], rng_init,
                                                                        pooling=key.pooling)))
            state = init_kernel(z0, key.warmup, step_size=step, inverse_mass_matrix=mass_in(COORD_SCALE**2 * inv_mass),
                                dense_mass=key.dense_mass if blocks is None else blocks,
                                target_accept_prob=key.target_accept,
                                max_tree_depth=key.max_tree_depth, model_args=args, rng_key=rng_nuts)

            total = key.warmup + key.draws
            # one loop over warm-up and sampling (the kernel adapts while its counter is below
            # num_warmup): NUTS is traced and compiled once, not twice
            if not key.progress:
                def step_fn(s: Any, _: Any) -> tuple:
                    s = sample_kernel(s, model_args=args)
                    return s, (s.z, s.diverging, s.num_steps)

                last, (z, div, steps) = jax.lax.scan(step_fn, state, None, length=total)
            else:
                chain = jax.lax.axis_index(CHAIN_AXIS)
                every = max(1, total // PROGRESS_UPDATES)

                def step_fn_progress(carry: tuple, i: jax.Array) -> tuple:
                    s, n_div = carry  # n_div: divergences so far in (warm-up, sampling)
                    s = sample_kernel(s, model_args=args)
                    n_div = n_div.at[(i >= key.warmup).astype(int)].add(s.diverging.astype(int))
                    # the iteration counter is the scan's own, not batched under vmap: the cond
                    # stays a branch (a batched predicate would run the callback every iteration)
                    report = ((i + 1) % every == 0) | (i + 1 == key.warmup) | (i + 1 == total)
                    jax.lax.cond(report, lambda: jax.debug.callback(_report, chain, i + 1, n_div), lambda: None)
                    return (s, n_div), (s.z, s.diverging, s.num_steps)

                (last, _), (z, div, steps) = jax.lax.scan(step_fn_progress, (state, jnp.zeros(2, int)),
                                                          jnp.arange(total))
            z, div, steps = jax.tree.map(lambda x: x[key.warmup:], (z, div, steps))
            post = jax.vmap(lambda zi: constrain_fn(model, args, {}, unscale(zi), return_deterministic=True))(z)
            post.pop("u")  # sampling coordinates: the law's own sites are recorded beside them
            post.pop("h", None)
            adapt = last.adapt_state
            end = jnp.concatenate([last.z["u"], last.z["h"]]) if grouped else last.z["u"]
            return post, div, steps, (end / COORD_SCALE, mass_out(adapt.inverse_mass_matrix) / COORD_SCALE**2,
                                      adapt.step_size)

        self._k = k_pop + (key.pooling.dim(key.law) if grouped else 0)
        data_axis = 0 if key.batched else None
        # the chain axis is named only where the progress callback asks for it: the program
        # without progress stays the one the persistent cache holds
        named = {"axis_name": CHAIN_AXIS} if key.progress else {}
        if self.method == "parallel":
            self._run = jax.pmap(one_chain, in_axes=(0, data_axis, 0), **named)
        else:
            self._run = jax.jit(jax.vmap(one_chain, in_axes=(0, data_axis, 0), **named))

    def run(
        self,
        rng_key: jax.Array,
        log_N: np.ndarray,
        log_D: np.ndarray,
        log_loss: np.ndarray,
        mask: np.ndarray,
        pivots: tuple[float, float],
        prior_values: Mapping[str, np.ndarray],
        warm_start: WarmStart | None = None,
        group: np.ndarray | None = None,
        se: np.ndarray | None = None,
        progress: ProgressBar | None = None,
    ) -> Draws:
        """Sample the posterior given runs padded to ``key.size`` (``mask`` marks the real ones).

        Chains start at their priors' medians (jittered), with a unit mass matrix and step size 1,
        unless ``warm_start`` gives where to start. For a ``batched`` key every argument but
        ``pivots`` and ``prior_values`` has a leading axis of length ``chains``: chain ``i`` fits
        table ``i`` (with the same priors and pivots). ``group`` (each run's group index) is
        required for a key with ``pooling``, ``se`` (log-loss standard errors) for one with
        ``measurement``. A key with ``progress`` reports to ``progress`` while it runs (and
        closes its line at the end).
        """
        if (group is None) != (self.key.pooling is None) or (se is None) == self.key.measurement:
            raise ValueError("group indices go with a grouped key, standard errors with a measurement key")
        opt = lambda x, t: None if x is None else jnp.asarray(x, dtype=t)  # noqa: E731
        args = (jnp.asarray(log_N), jnp.asarray(log_D), jnp.asarray(log_loss), jnp.asarray(mask),
                opt(group, int), opt(se, float),
                jnp.asarray(pivots, dtype=float), {k: jnp.asarray(v, dtype=float) for k, v in prior_values.items()})
        c, k = self.key.chains, self._k
        if self.key.batched:
            args = (*args[:6], jnp.broadcast_to(args[6], (c, 2)),
                    {name: jnp.broadcast_to(v, (c, *v.shape)) for name, v in args[7].items()})
        if warm_start is None:
            start = (np.zeros(c, bool), np.zeros((c, k)), np.broadcast_to(np.eye(k), (c, k, k)), np.ones(c))
        else:
            start = (np.ones(c, bool), warm_start.position, warm_start.inverse_mass_matrix, warm_start.step_size)
        start = tuple(jnp.asarray(x) for x in start)
        global _ACTIVE
        _ACTIVE = progress if self.key.progress else None
        try:
            post, div, steps, ends = jax.device_get(self._run(jax.random.split(rng_key, c), args, start))
            jax.effects_barrier()  # every callback has reached the bar before its line ends
        finally:
            _ACTIVE = None
            if progress is not None:
                progress.close()
        return Draws({k: np.asarray(v) for k, v in post.items()}, np.asarray(div), np.asarray(steps), self.method,
                     WarmStart(*(np.asarray(x) for x in ends)))


_COMPILED: dict[SamplerKey, CompiledNUTS] = {}


def compiled(key: SamplerKey) -> CompiledNUTS:
    """The sampler for ``key``, built once per process."""
    if key not in _COMPILED:
        _COMPILED[key] = CompiledNUTS(key)
    return _COMPILED[key]


def pad(x: np.ndarray, size: int, fill: float) -> np.ndarray:
    """``x`` padded with ``fill`` to ``size`` entries."""
    out = np.full(size, fill, dtype=float)
    out[: len(x)] = x
    return out


def pad_runs(x: Any, n: int) -> np.ndarray:
    """``x`` with its last (runs) axis of length ``n`` padded to :func:`bucket` ``(n)`` by repeating
    its last entry; an axis of length 1 (broadcast over runs) is left alone.

    Jitted per-run functions (log likelihoods, log means, held-out densities) then compile once per
    bucket instead of once per table size: a design loop refits dozens of sizes in one process, and
    every compiled program keeps LLVM memory mappings until the process ends (CPU JAX aborts with
    "Unable to allocate section memory" once they pass the kernel's map limit). Repeating a real
    entry keeps the padded terms finite; callers slice them off.
    """
    x = np.asarray(x)
    if x.ndim == 0 or x.shape[-1] != n or n == 0:
        return x
    size = bucket(n)
    if size == n:
        return x
    return np.concatenate([x, np.repeat(x[..., -1:], size - n, axis=-1)], axis=-1)


def maps_in_use() -> tuple[int, int] | None:
    """``(memory mappings this process holds, the kernel's limit)`` on Linux, else ``None``."""
    try:
        with open("/proc/self/maps", "rb") as f:
            used = sum(1 for _ in f)
        with open("/proc/sys/vm/max_map_count") as f:
            limit = int(f.read().strip())
    except (OSError, ValueError):
        return None
    return used, limit


def release_compiled(threshold: float = 0.5) -> bool:
    """Drop every compiled sampler and jax's jit caches when this process holds more than
    ``threshold`` of the kernel's memory-mapping limit; return whether it did.

    CPU XLA keeps each compiled program's code in LLVM mappings for as long as the program is
    cached, so a process that compiles for many table sizes (a design loop crossing buckets, a
    bench fitting many subsets) can reach ``vm.max_map_count`` and abort inside LLVM. Clearing
    costs one recompilation per program still in use, so call this between fits, never inside one.
    """
    use = maps_in_use()
    if use is None or use[0] <= threshold * use[1]:
        return False
    import gc

    _COMPILED.clear()
    jax.clear_caches()
    gc.collect()
    return True
