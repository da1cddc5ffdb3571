"""Shared pytest options: `--runslow` enables tests marked `slow`; BENCHDATA points at the benchmark data.

Every process of the session (this one, pytest-xdist's workers, and the training and evaluation commands the tests
launch) shares one persistent JAX compilation cache, so a command launched again with the same shapes loads its
executables instead of compiling them: the micro training run takes ~40 s instead of ~150 s the second time. The
cache lives in a fresh directory per session (a user's own JAX_COMPILATION_CACHE_DIR is kept), so every CI run still
compiles once.

They also compile at XLA's lowest backend optimisation level: compiling, not running, is most of a test's time on a
CPU, and the micro training run then takes ~100 s instead of ~155 s with the same final metrics. A user's own
XLA_FLAGS are kept, this flag appended unless they name it.
"""
import os
import pathlib
import shutil
import tempfile

import pytest

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:  # before anything imports jax
    _CACHE = tempfile.mkdtemp(prefix="agent_rl_jax_cache_")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
else:
    _CACHE = None
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level=0".strip()

ROOT = pathlib.Path(__file__).resolve().parents[1]
BENCHDATA = pathlib.Path(os.environ.get("AGENT_RL_BENCHDATA", ROOT.parent / "shared" / "benchdata"))


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_sessionfinish(session, exitstatus):
    if _CACHE is not None:
        shutil.rmtree(_CACHE, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: pass --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def benchdata():
    if not BENCHDATA.is_dir():
        pytest.skip(f"benchmark data not found at {BENCHDATA} (set AGENT_RL_BENCHDATA)")
    return BENCHDATA
