"""Run a training config and read back what it wrote: what the notebooks (and any ablation script) share.

    from agent_rl import runs
    base = runs.run("configs/tiny.py", "runs/ablate/default")                     # trains, or loads a finished run
    kl = runs.run("configs/tiny.py", "runs/ablate/kl_0.04", {"grpo.beta": 0.04, "sft.init_from": base.workdir})
    print(runs.compare({"default": base, "kl 0.04": kl}))                       # Markdown: base row, aligned rows
    runs.plot_curves({"default": base, "kl 0.04": kl}, ("malicious_refusal", "over_refusal"))

Each run is `launch/train.py` in a subprocess (its own JAX process and memory; its output goes to
`<workdir>/train.log`), so a notebook kernel stays small and a failed run raises one error naming its log. A
finished workdir is resumed, which returns at once with the same results. `SCALES` names the sizes a notebook can
pick: `smoke` (the micro config: seconds to a minute on a CPU), `cpu` (the default config with 400 SFT and 26 GRPO
steps and no malformed-reply penalty, ~11 minutes a run: the size and reward docs/ablations.md was measured at),
`gpu` (three times those GRPO steps, for a Colab accelerator).
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import subprocess
import sys
from typing import Any, Mapping, Sequence

from agent_rl.metrics_log import read_jsonl
from sandbox.metrics import HEADLINE, fmt

ROOT = pathlib.Path(__file__).resolve().parents[1]
# scale: (config file, overrides every run of that scale gets)
SCALES: dict[str, tuple[str, dict[str, Any]]] = {
    "smoke": ("configs/micro.py", {}),
    "cpu": ("configs/tiny.py", {"sft.steps": 400, "grpo.steps": 26, "reward.weights.malformed": 0.0}),
    "gpu": ("configs/tiny.py", {"sft.steps": 400, "grpo.steps": 78, "reward.weights.malformed": 0.0}),
}


@dataclasses.dataclass
class Run:
    """What a finished run wrote: heldout metrics after SFT (`base`) and after GRPO (`aligned`), the iid ones
    ({"base", "aligned"} or None), and every logged step of metrics.jsonl (`records`)."""
    workdir: pathlib.Path
    base: dict[str, float]
    aligned: dict[str, float]
    iid: dict[str, dict[str, float]] | None
    records: list[dict[str, Any]]
    config: dict[str, Any]

    def curve(self, name: str, prefix: str = "train/") -> tuple[list[int], list[float]]:
        """(steps, values) of one logged metric, e.g. curve("over_refusal") over the GRPO rollout batches."""
        pts = [(r["step"], r[prefix + name]) for r in self.records if prefix + name in r]
        return [s for s, _ in pts], [v for _, v in pts]


def load(workdir: str | os.PathLike) -> Run:
    """The results of a finished run (`final_metrics.json`, `metrics.jsonl`, `config.json` in `workdir`)."""
    workdir = pathlib.Path(workdir)
    path = workdir / "final_metrics.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; the run in {workdir} has not finished")
    final = json.loads(path.read_text())
    records = read_jsonl(workdir / "metrics.jsonl") if (workdir / "metrics.jsonl").is_file() else []
    return Run(workdir, final["base"], final["aligned"], final.get("iid"), records,
               json.loads((workdir / "config.json").read_text()))


def _flag(key: str, value: Any) -> str:
    if isinstance(value, (list, tuple)):
        value = "(" + ",".join(map(str, value)) + ("," if len(value) == 1 else "") + ")"
    return f"--config.{key}={value}"


def command(config: str, workdir: str | os.PathLike, overrides: Mapping[str, Any] = {}) -> list[str]:
    """The `launch/train.py` command line of a run (config relative to the repository, or absolute)."""
    path = pathlib.Path(config)
    cfg = str(path if path.is_absolute() or ":" in config else ROOT / path)
    return ([sys.executable, str(ROOT / "launch" / "train.py"), "--config", cfg, _flag("workdir", workdir)]
            + [_flag(k, v) for k, v in overrides.items()])


def run(config: str, workdir: str | os.PathLike, overrides: Mapping[str, Any] = {}, *,
        timeout: float | None = None) -> Run:
    """Train `config` with dotted-key `overrides` into `workdir` (resuming what is there) and return its results.
    A run that fails raises RuntimeError with the run's last error lines and the path of its full log."""
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "train.log"
    with open(log, "a") as f:
        proc = subprocess.run(command(config, workdir, overrides), cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                              timeout=timeout)
    if proc.returncode != 0:
        lines = [ln for ln in log.read_text().splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("error:")] or lines[-1:]  # (this attempt's, and any before)
        raise RuntimeError(f"training run in {workdir} failed (exit {proc.returncode}): {'; '.join(errors[-3:])} "
                           f"(log: {log})")
    return load(workdir)


def compare(runs: Mapping[str, Run], metrics: Sequence[str] = HEADLINE, split: str = "heldout") -> str:
    """Markdown table: one row for the SFT base of the first run, then each run's aligned metrics (`split`
    "heldout" or "iid"); a run with a base of its own gets its base's row too, just before its own."""
    def pick(r: Run, phase: str) -> dict:
        return (r.base if phase == "base" else r.aligned) if split == "heldout" else (r.iid or {}).get(phase, {})

    rows = [f"| run ({split}) | " + " | ".join(metrics) + " |", "|---|" + "---:|" * len(metrics)]
    first = next(iter(runs.values()))
    rows.append("| SFT base | " + " | ".join(fmt(pick(first, "base").get(m)) for m in metrics) + " |")
    for name, r in runs.items():
        if pick(r, "base") != pick(first, "base"):
            rows.append(f"| SFT base of {name} | " + " | ".join(fmt(pick(r, "base").get(m)) for m in metrics) + " |")
        rows.append(f"| {name} | " + " | ".join(fmt(pick(r, "aligned").get(m)) for m in metrics) + " |")
    return "\n".join(rows)


def plot_curves(runs: Mapping[str, Run], metrics: Sequence[str] = ("malicious_refusal", "over_refusal"),
                prefix: str = "train/", title: str = ""):
    """A matplotlib figure, one panel per metric, one line per run, against the global step (`train/`: the GRPO
    rollout batches of each step; `eval/`: heldout evaluations, when the runs logged them)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.2), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        for name, r in runs.items():
            steps, values = r.curve(m, prefix)
            if steps:
                ax.plot(steps, values, marker=".", label=name)
        ax.set_title(f"{prefix}{m}")
        ax.set_xlabel("step")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def evaluate(suite: str, policy: str, out: str | os.PathLike, **flags: Any) -> dict[str, float]:
    """`launch/eval.py --suite SUITE --policy POLICY --out OUT [--FLAG=VALUE ...]` in a subprocess; its metrics.
    A failure raises RuntimeError with the command's last error line."""
    cmd = [sys.executable, str(ROOT / "launch" / "eval.py"), f"--suite={suite}", f"--policy={policy}",
           f"--out={out}"] + [f"--{k}={v}" for k, v in flags.items()]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        raise RuntimeError(f"{suite} evaluation of {policy} failed (exit {proc.returncode}): "
                           f"{lines[-1] if lines else ''}")
    return json.loads(pathlib.Path(out).read_text())
