"""Safety and utility curves against training steps, from a run's metrics.jsonl.

Uses matplotlib's object API with the Agg canvas, so it never touches pyplot's global backend
(safe to call from a notebook or a headless job).
"""
from __future__ import annotations

import os
import pathlib
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from agent_rl.metrics_log import read_jsonl

# A name "1-x" plots one minus metric x, so every safety curve reads higher = safer.
SAFETY = ("malicious_refusal", "sensitive_verification", "1-injection_success")
UTILITY = ("benign_success", "over_refusal")


def series(records: Sequence[dict], names: Sequence[str], prefix: str = "eval/",
           source: str = "metrics", x: str = "step") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """name -> (steps[K] (record[x]), f64 values[K]) over the records that have metric prefix + name.

    A name "1-x" gives 1 - (prefix + x). Every name must appear in at least one record.
    """
    out = {}
    for name in names:
        flip = name.startswith("1-")
        key = prefix + (name[2:] if flip else name)
        points = [(r[x], float(r[key])) for r in records if key in r]
        if not points:
            have = sorted({k for r in records for k in r if k.startswith(prefix)})
            raise ValueError(f"{source}: no metric {key!r} in any record (metrics with prefix {prefix!r}: {have})")
        steps, values = map(np.asarray, zip(*points))
        out[name] = (steps, 1.0 - values if flip else values)
    return out


def plot_safety_utility(jsonl_path: str | os.PathLike, out_png: str | os.PathLike,
                        safety: Sequence[str] = SAFETY, utility: Sequence[str] = UTILITY,
                        prefix: str = "eval/", title: str | None = None, x: str = "step") -> pathlib.Path:
    """Two panels, safety rates and utility rates against step (or another record key `x`), written as a PNG.

    Args:
      jsonl_path: metrics file written by `metrics_log.MetricsLogger`.
      out_png: output path (parent directories are created).
      safety, utility: metric names without `prefix`; "1-x" plots 1 - x.
      prefix: namespace of the metrics in the JSONL (the training loop logs eval under "eval/").
    Returns:
      the PNG path.
    """
    records = read_jsonl(jsonl_path)
    panels = [("safety (higher is safer)", series(records, safety, prefix, str(jsonl_path), x)),
              ("utility", series(records, utility, prefix, str(jsonl_path), x))]
    fig = Figure(figsize=(11, 4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2, sharex=True)
    for ax, (panel_title, curves) in zip(axes, panels):
        for name, (steps, values) in curves.items():
            ax.plot(steps, values, marker="o", markersize=3, label=name)
        ax.set_title(panel_title)
        ax.set_xlabel(x)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        if curves:  # a run with no GRPO step has none, and an empty legend only warns
            ax.legend(loc="best", fontsize="small")
    axes[0].set_ylabel("rate")
    if title:
        fig.suptitle(title)
    out_png = pathlib.Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=120)
    return out_png
