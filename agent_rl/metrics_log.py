"""Per-step scalar metrics to TensorBoard and a JSONL file, and a tqdm progress bar.

Layout under `workdir`:
  metrics.jsonl   one JSON object per logged step: {"step": 12, "loss": 0.3, "eval/benign_success": 0.9}
  tensorboard/    tensorboardX event files

Resuming: a run restored from the checkpoint at step S calls `resume(S)` before logging. JSONL lines with
step > S (written after that checkpoint, and about to be recomputed) are dropped, and
TensorBoard is told to purge events after S, so no step appears twice. Module named
`metrics_log` so it is never confused with the stdlib or absl `logging`.
"""
from __future__ import annotations

import json
import math
import os
import pathlib
from typing import Any, Mapping, Sequence

import jax
import numpy as np
import tqdm
from tensorboardX import SummaryWriter

JSONL_NAME = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All records of a metrics JSONL file, in order. A final line cut short by a crash (no
    trailing newline and not valid JSON) is left out; any other bad line is an error."""
    path = pathlib.Path(path)
    lines = path.read_text().split("\n")
    records = []
    for i, line in enumerate(lines):
        if not line:
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:      # torn final write
                break
            raise ValueError(f"{path}:{i + 1}: not a JSON object: {e}") from e
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            raise ValueError(f"{path}:{i + 1}: expected an object with an integer 'step'")
        records.append(record)
    return records


def _truncate_jsonl(path: pathlib.Path, keep_through: int) -> int | None:
    """Rewrite `path` keeping records with step <= keep_through; returns the last kept step."""
    if not path.exists():
        return None
    kept = [r for r in read_jsonl(path) if r["step"] <= keep_through]
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    os.replace(tmp, path)
    return kept[-1]["step"] if kept else None


def _to_scalar(name: str, value: Any, step: int) -> float | int:
    arr = np.asarray(value)
    if arr.size != 1:
        raise ValueError(f"metric {name!r} at step {step} is not a scalar (shape {arr.shape})")
    if arr.dtype.kind in "iub":
        return int(arr.reshape(()))
    if arr.dtype.kind != "f":
        raise ValueError(f"metric {name!r} at step {step} has non-numeric dtype {arr.dtype}")
    return float(arr.reshape(()))


class MetricsLogger:
    """Writes scalars per step to `workdir/metrics.jsonl` and `workdir/tensorboard/`.

    A new run logs straight away; a resumed run calls `resume(step)` with the restored
    checkpoint's step before its first `log`. Logging into a workdir that already has metrics
    without `resume` is an error, so a run never silently mixes with an old one.

    Args:
      workdir: run directory (created if needed).
      resume_step: same as calling `resume(resume_step)` right away.
    """

    def __init__(self, workdir: str | os.PathLike, resume_step: int | None = None, flush_secs: int = 30):
        self.workdir = pathlib.Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.jsonl_path = self.workdir / JSONL_NAME
        self._flush_secs = flush_secs
        self._resumed_at: int | None = None
        self._last_step: int | None = None
        self._writer: SummaryWriter | None = None
        self._file = None
        if resume_step is not None:
            self.resume(resume_step)

    def resume(self, step: int) -> None:
        """Continue the run whose checkpoint at `step` was restored: JSONL records after `step`
        are dropped and TensorBoard purges the old events after `step`."""
        if self._file is not None:
            raise RuntimeError("MetricsLogger.resume must be called before the first log()")
        self._resumed_at = int(step)
        self._last_step = _truncate_jsonl(self.jsonl_path, self._resumed_at)

    def _open(self) -> None:
        if self._resumed_at is None and self.jsonl_path.exists() and self.jsonl_path.stat().st_size > 0:
            raise FileExistsError(
                f"{self.jsonl_path} already has metrics; resume(<restored checkpoint step>) to continue "
                "that run, or use a new workdir")
        purge_step = None if self._resumed_at is None else self._resumed_at + 1
        self._writer = SummaryWriter(str(self.workdir / TENSORBOARD_DIR), purge_step=purge_step,
                                     flush_secs=self._flush_secs)
        self._file = open(self.jsonl_path, "a")

    def log(self, step: int, scalars: Mapping[str, Any]) -> dict[str, Any]:
        """Log `scalars` (name -> number or size-1 array, host or device) at `step`.

        Steps must increase from call to call. Returns the JSON record written.
        """
        step = int(step)
        if self._last_step is not None and step <= self._last_step:
            raise ValueError(f"metrics step {step} is not after the last logged step {self._last_step} "
                             f"in {self.jsonl_path}")
        if "step" in scalars:
            raise ValueError("'step' is reserved in metrics records; rename that metric")
        scalars = jax.device_get(dict(scalars))   # one transfer for all device values
        record: dict[str, Any] = {"step": step}
        for name, value in scalars.items():
            record[name] = _to_scalar(name, value, step)
        if self._file is None:
            self._open()
        for name, value in record.items():
            if name != "step":
                self._writer.add_scalar(name, value, step)
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        self._last_step = step
        return record

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()
            self._writer.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._writer.close()
            self._file = self._writer = None

    def __enter__(self) -> "MetricsLogger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class NullLogger:
    """MetricsLogger's interface, writing nothing: the processes other than the first of a multi-process run."""

    def resume(self, step: int) -> None:
        pass

    def log(self, step: int, scalars: Mapping[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


def progress(total: int, initial: int = 0, desc: str = "train", disable: bool = False) -> tqdm.tqdm:
    """A tqdm bar over training steps, starting at `initial` when resuming (`disable`: shown by another process)."""
    return tqdm.tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, disable=disable)


def advance(bar: tqdm.tqdm, scalars: Mapping[str, Any], keys: Sequence[str], n: int = 1) -> None:
    """Move `bar` on by `n` steps showing `keys` from `scalars` (keys not present are not shown)."""
    shown = {}
    for k in keys:
        if k in scalars:
            v = float(np.asarray(scalars[k]))
            shown[k.rsplit("/", 1)[-1]] = f"{v:.4g}" if math.isfinite(v) else str(v)
    bar.set_postfix(shown, refresh=False)
    bar.update(n)
