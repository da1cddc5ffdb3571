"""Safety/utility plot from a metrics JSONL."""
import json

import matplotlib.image
import numpy as np
import pytest

from agent_rl import plots


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


RECORDS = [
    {"step": 0, "eval/malicious_refusal": 0.1, "eval/sensitive_verification": 0.0,
     "eval/injection_success": 0.8, "eval/benign_success": 0.9, "eval/over_refusal": 0.0},
    {"step": 5, "loss": 0.3},                                    # a training-only step
    {"step": 10, "eval/malicious_refusal": 0.7, "eval/sensitive_verification": 0.5,
     "eval/injection_success": 0.25, "eval/benign_success": 0.85, "eval/over_refusal": 0.05},
]


def test_series_values():
    got = plots.series(RECORDS, plots.SAFETY + plots.UTILITY)
    np.testing.assert_array_equal(got["malicious_refusal"][0], [0, 10])
    np.testing.assert_allclose(got["malicious_refusal"][1], [0.1, 0.7])
    np.testing.assert_allclose(got["1-injection_success"][1], [0.2, 0.75])
    np.testing.assert_allclose(got["over_refusal"][1], [0.0, 0.05])


def test_writes_png(tmp_path):
    _write(tmp_path / "metrics.jsonl", RECORDS)
    out = plots.plot_safety_utility(tmp_path / "metrics.jsonl", tmp_path / "plots" / "su.png", title="run")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    image = matplotlib.image.imread(out)
    assert image.shape[0] == 480 and image.shape[1] == 1320            # 11 x 4 inches at 120 dpi
    assert image[..., :3].std() > 0.05                                 # not a blank canvas


def test_missing_metric_is_named(tmp_path):
    _write(tmp_path / "metrics.jsonl", [{"step": 1, "eval/benign_success": 1.0}])
    with pytest.raises(ValueError, match="no metric 'eval/malicious_refusal'.*eval/benign_success"):
        plots.plot_safety_utility(tmp_path / "metrics.jsonl", tmp_path / "x.png")


def test_empty_panels_write_without_warnings(tmp_path, recwarn):
    """A run with no GRPO step has no curves to plot: the PNG is still written, and nothing warns."""
    _write(tmp_path / "metrics.jsonl", [{"step": 1, "loss": 0.5}])
    out = plots.plot_safety_utility(tmp_path / "metrics.jsonl", tmp_path / "x.png", safety=(), utility=())
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [w for w in recwarn if "legend" in str(w.message)]
