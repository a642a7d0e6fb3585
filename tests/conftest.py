"""Shared fixtures: pinned randomness, simulated data, one real Chinchilla fit per session."""

from __future__ import annotations

import os
import tempfile

# a private compilation cache: tests must not depend on (or pollute) the user's
os.environ.setdefault("BAYESCALE_JAX_CACHE", tempfile.mkdtemp(prefix="bayescale-jax-"))

import numpy as np
import pandas as pd
import pytest

# Epoch AI's refit of the Chinchilla data (Besiroglu et al. 2024) and its bootstrap SEs
EPOCH = {"E": (1.8172, 0.026), "alpha": (0.3478, 0.0154), "beta": (0.3658, 0.0206)}

TRUE_CHINCHILLA = {"E": 1.8, "A": 480.0, "B": 2000.0, "alpha": 0.34, "beta": 0.37}
TRUE_KAPLAN = {"E": 1.7, "N_c": 8.8e9, "D_c": 5.4e9, "alpha_N": 0.35, "alpha_D": 0.4}


#: release compiled programs once the process holds this many memory mappings (the limit is 65,530;
#: the heaviest test module adds about 15,000)
MAPPINGS_RELEASE = 25_000


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop every compiled sampler and jitted program after a test module once the process holds
    more than :data:`MAPPINGS_RELEASE` memory mappings.

    Each XLA executable keeps a few hundred memory mappings of LLVM-generated code alive for as long
    as it is cached, and the whole suite compiles thousands of programs in one process: at about
    180 tests it passed the kernel's limit of 65,530 mappings per process (vm.max_map_count), and
    XLA aborted in the middle of a compile ("LLVM compilation error: Cannot allocate memory").
    Clearing the caches releases the mappings (measured: 4,023 -> 1,060 after three fits); a later
    module recompiles what it needs, mostly from the persistent compilation cache on disk, so the
    caches are cleared only when the count is high (clearing after every module cost the quick
    subset 30 s).
    """
    yield
    from bayescale.sampler import maps_in_use, release_compiled

    use = maps_in_use()
    if use is not None:
        release_compiled(threshold=MAPPINGS_RELEASE / use[1])


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240514)


def simulate(law: str, params: dict, n: int, noise: float, seed: int) -> pd.DataFrame:
    """n runs log-uniform over N in [1e7, 1e10] and tokens/param in [2, 200], noise on log loss.

    The noise draws are standardised (mean 0, sd exactly ``noise``), so the true sigma is the
    data's own noise level and recovery tests probe the law's parameters, not the luck of the
    noise scale in a small sample.
    """
    from bayescale.laws import loss

    r = np.random.default_rng(seed)
    N = np.exp(r.uniform(np.log(1e7), np.log(1e10), n))
    D = N * np.exp(r.uniform(np.log(2), np.log(200), n))
    mu = np.asarray(loss(law, params, N, D))
    eps = r.standard_normal(n)
    y = mu * np.exp(noise * (eps - eps.mean()) / eps.std())
    return pd.DataFrame({"N": N, "D": D, "loss": y, "run_id": [f"sim{i}" for i in range(n)]})


@pytest.fixture(scope="session")
def chinchilla_runs() -> pd.DataFrame:
    import bayescale as bs

    return bs.load_runs("chinchilla", filter="kept_by_epoch == 1")


@pytest.fixture(scope="session")
def chinchilla_fit(chinchilla_runs, tmp_path_factory):
    """The default fit (4 chains x 1000 + 1000) of the 240 kept rows, saved and reloaded."""
    import bayescale as bs

    idata = bs.fit(chinchilla_runs, bs.FitConfig(law="chinchilla"), quiet=True)
    path = tmp_path_factory.mktemp("models") / "chinchilla.nc"
    bs.save_posterior(idata, path)
    return bs.load_posterior(path), path


def write_toy_corpus(src) -> None:
    """Ten small text files of random words in ``src``: a corpus the trainer's tests tokenize in seconds."""
    src.mkdir(parents=True)
    rng = np.random.default_rng(1)
    words = ["the", "king", "queen", "lord", "and", "of", "thou", "art", "shall", "love", "night"]
    for i in range(10):
        text = "\n".join(" ".join(rng.choice(words, size=10)) for _ in range(300))
        (src / f"d{i}.txt").write_text(text + "\n")
