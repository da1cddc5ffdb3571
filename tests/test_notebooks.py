"""Every notebook in colab/ runs top to bottom at `smoke` scale (micro config) with nbclient; a cell error fails.

The runs go to a temporary directory (AGENT_RL_RUNS), so the notebooks' committed outputs and runs/ stay untouched.
Notebooks share the smoke SFT base: the first one trains it and the others load it (`sft.init_from`).

CI time: the quickstart runs in CI; the other four (~6 minutes together on 2 cores) are marked slow and run with
`--runslow`."""
import os
import pathlib

import nbclient
import nbformat
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "colab").glob("*.ipynb"))


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("notebook_runs")


def test_there_are_notebooks():
    assert [p.name for p in NOTEBOOKS] == ["01_quickstart.ipynb", "02_reward.ipynb", "03_channels.ipynb",
                                           "04_grpo_knobs.ipynb", "05_smollm2_lora.ipynb"]


@pytest.mark.parametrize("path", [pytest.param(p, marks=() if p.stem.startswith("01_") else pytest.mark.slow)
                                  for p in NOTEBOOKS], ids=lambda p: p.stem)
def test_notebook_runs_at_smoke_scale(path, runs_dir, monkeypatch):
    nb = nbformat.read(path, as_version=4)
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and "SCALE" in params[0].source  # papermill's parameters cell
    monkeypatch.setenv("AGENT_RL_SCALE", "smoke")
    monkeypatch.setenv("AGENT_RL_RUNS", str(runs_dir))
    client = nbclient.NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}})
    client.execute()  # raises CellExecutionError naming the cell on any error
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "scale smoke" in text
