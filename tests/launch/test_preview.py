"""launch/preview.py: episodes split into policy and env runs, and the script end to end on one scenario."""
import pathlib
import subprocess
import sys

import numpy as np

from launch import preview

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_segments_split_policy_and_env_runs():
    toks = np.array([5, 6, 7, 8, 0, 0])
    mask = np.array([1, 1, 0, 1, 0, 0], bool)
    assert preview.segments(toks, mask, pad_id=0) == [("policy", [5, 6]), ("env", [7]), ("policy", [8])]


def test_prints_an_episode_from_another_directory(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "launch" / "preview.py"), "--n=1", "--split=heldout", "--tokenizer=byte"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "--- [prompt]" in out.stdout and "--- [policy]" in out.stdout and "paper=" in out.stdout
