"""Token classes and per-class losses of the copying probe, on hand-made pieces and values."""
import json
import math
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from experiments import copying

ROOT = pathlib.Path(__file__).resolve().parents[2]

PIECES = ["<tool_call>", "</tool_call>", "4", "2", "x", '"', "ab1", ""]
CALL, END, D4, D2, X, Q, AB1, EMPTY = range(8)
C = {name: i for i, name in enumerate(copying.CLASSES)}
NS = copying.NOT_SCORED


def test_token_classes_by_place_and_digit_run():
    tokens = np.array([[X, D4, D2, CALL, Q, D4, D2, X, END, D4],
                       [CALL, AB1, D2, EMPTY, D2, D4, END, D2, X, X]])
    mask = np.ones_like(tokens, bool)
    mask[0, 0] = False
    mask[1, 8:] = False
    want = np.array([
        [NS, C["text/first_digit"], C["text/next_digit"], C["call/other"], C["call/other"], C["call/first_digit"],
         C["call/next_digit"], C["call/other"], C["call/other"], C["text/first_digit"]],
        # "ab1" and the empty piece are not digits; the closing tag is inside its block
        [C["call/other"], C["call/other"], C["call/first_digit"], C["call/other"], C["call/first_digit"],
         C["call/next_digit"], C["call/other"], C["text/first_digit"], NS, NS]])
    np.testing.assert_array_equal(copying.token_classes(PIECES, tokens, mask), want)


def test_stray_close_tag_does_not_open_a_block():
    tokens = np.array([[END, D4, CALL, D4]])
    got = copying.token_classes(PIECES, tokens, np.ones_like(tokens, bool))
    np.testing.assert_array_equal(got, [[C["text/other"], C["text/first_digit"], C["call/other"],
                                         C["call/first_digit"]]])


def test_summarize_counts_means_and_medians():
    classes = np.array([[NS, C["call/next_digit"], C["call/next_digit"], C["call/next_digit"], C["text/other"]]])
    nll = np.array([[9.0, 1.0, 2.0, 6.0, 0.5]])
    out = copying.summarize(nll, classes)
    assert out["call/next_digit"] == {"n": 3, "mean": 3.0, "median": 2.0}
    assert out["text/other"] == {"n": 1, "mean": 0.5, "median": 0.5}
    assert out["call/first_digit"]["n"] == 0 and math.isnan(out["call/first_digit"]["mean"])
    assert sum(r["n"] for r in out.values()) == 4  # the unscored token counts nowhere


@pytest.mark.parametrize("gap", ["none", "random"])
def test_copy_rows_repeat_their_first_segment_at_the_end(gap):
    tokens, valid, mask = copying.copy_rows(np.random.default_rng(0), 64, 30, 7, gap)
    assert tokens.shape == valid.shape == mask.shape == (64, 30)
    assert tokens.min() >= 0 and tokens.max() < 7
    lengths = set()
    for t, v, m in zip(tokens, valid, mask):
        start, n = int(np.argmax(v)), int(m.sum()) + 1  # the copy: the masked tokens and the one before them
        assert v[start:].all() and not v[:start].any()  # left-padded
        assert m[30 - n + 1:].all() and not m[:30 - n + 1].any()
        np.testing.assert_array_equal(t[start:start + n], t[30 - n:])
        lengths.add((n, int(v.sum())))
    if gap == "none":
        assert lengths == {(15, 30)}  # always 15 tokens back
    else:
        assert len(lengths) > 10 and all(4 <= n <= 10 for n, _ in lengths)


def test_copy_rows_reject_bad_settings():
    with pytest.raises(ValueError, match="gap='far'"):
        copying.copy_rows(np.random.default_rng(0), 2, 30, 7, "far")
    with pytest.raises(ValueError, match="width=8"):
        copying.copy_rows(np.random.default_rng(0), 2, 8, 7, "none")


def test_synthetic_copy_learns_the_fixed_distance_copy(tmp_path):
    """The micro model learns to copy a sequence repeated right after itself within 200 steps."""
    cmd = [sys.executable, str(ROOT / "experiments" / "synthetic_copy.py"),
           "--config", str(ROOT / "configs" / "micro.py"), "--gap=none", "--steps=200", "--every=50", "--width=24",
           "--pool=8", "--batch=16", "--lr=1e-2", f"--out={tmp_path / 'c.json'}"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    curve = json.loads((tmp_path / "c.json").read_text())["curves"]["none"]
    assert [p["step"] for p in curve] == [50, 100, 150, 200]
    assert curve[0]["loss"] > 0.9 * math.log(8) and curve[-1]["loss"] < 0.1
    assert "uniform guess ln(8) = 2.079" in out.stdout
