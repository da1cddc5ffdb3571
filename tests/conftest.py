"""Shared pytest options: `--runslow` enables tests marked `slow`; BENCHDATA points at the benchmark data."""
import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
BENCHDATA = pathlib.Path(os.environ.get("AGENT_RL_BENCHDATA", ROOT.parent / "shared" / "benchdata"))


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


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
