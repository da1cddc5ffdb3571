"""What every benchmark harness shares: the data directory, strict JSON loading, the host-side reading of a policy
turn (and whether it is a refusal), and the results table / file.

Benchmark data is never vendored. A harness reads `<root>/<benchmark>/...`, where root is the `data_dir` argument
(`--data_dir`) or else the `AGENT_RL_BENCHDATA` environment variable; `data_dir` may also name the benchmark folder
itself.
"""
from __future__ import annotations

import json
import math
import os
import pathlib
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

from sandbox import refusal
from sandbox.turns import Action, Turn, parse_turn  # noqa: F401  (re-exported: the harnesses' turn reader)

ENV_VAR = "AGENT_RL_BENCHDATA"


class RunArgs(NamedTuple):
    """What a suite's run function reads besides the policy spec (the CLI fills it from its flags).

    data_dir: benchdata root or the benchmark folder (None: $AGENT_RL_BENCHDATA). split: suite-specific selection
    ("" = the suite's default). limit: at most this many cases per data file (0 = all). tool_style: how tool lists
    are written in system prompts ("compact" or "json", see `sandbox.protocol.render_tools`). config: passed to
    model policy factories (and suites that need one).
    """
    data_dir: str | None = None
    split: str = ""
    limit: int = 0
    tool_style: str = "compact"
    config: Any = None
    judge_dir: str | None = None  # agent_safetybench: a local judge checkpoint (ShieldAgent) to score with
    safety_k: int = 0  # sandbox: episodes per scenario for safety@k (0: 4)
    lora_scale: float = 1.0  # model policies: multiplier of a LoRA run's adapters (0 = its base, 1 = as trained)


class DataError(ValueError):
    """A missing benchmark file or a malformed record; the message names the file, record and field."""


# ----------------------------------------------------------------------------------------------------------------
# Data directory and loading.


def resolve_data_dir(data_dir: str | os.PathLike | None, benchmark: str, required: Sequence[str] = ()) -> pathlib.Path:
    """The folder of one benchmark, checked to hold every path in `required` (relative to it).

    data_dir: the benchdata root (holding `<benchmark>/`) or the benchmark folder itself; None reads $AGENT_RL_BENCHDATA.
    """
    if data_dir is None or str(data_dir) == "":
        data_dir = os.environ.get(ENV_VAR)
        if not data_dir:
            raise DataError(f"{benchmark}: no benchmark data directory given; pass --data_dir (data_dir=...) or set "
                            f"{ENV_VAR} to the folder that holds {benchmark}/")
    root = pathlib.Path(data_dir).expanduser()
    if not root.is_dir():
        raise DataError(f"{benchmark}: benchmark data directory {root} does not exist (from --data_dir or {ENV_VAR})")
    folder = root / benchmark if (root / benchmark).is_dir() else root
    for rel in required:
        if not (folder / rel).exists():
            raise DataError(f"{benchmark}: missing {folder / rel}; point --data_dir or {ENV_VAR} at the folder that "
                            f"holds {benchmark}/{rel}")
    return folder


def read_text(path: str | os.PathLike) -> str:
    """A UTF-8 text file; a missing file, or bytes that are not UTF-8, is one DataError naming the file and line."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise DataError(f"missing file {path}")
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path}: line {line} is not UTF-8 text ({e.reason} at byte {e.start})") from None


def _json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:  # also a too-long integer or too-deep nesting, not just bad syntax
        raise DataError(f"{where} not valid JSON ({e})") from None


def load_json(path: str | os.PathLike) -> Any:
    """The JSON value of a UTF-8 file; any failure is a DataError naming the file."""
    return _json(read_text(path), f"{path}:")


def load_jsonl_lines(path: str | os.PathLike) -> list[tuple[int, Any]]:
    """(1-based line number, JSON value) of every non-blank line; a bad line is reported by file and line.

    Lines end at "\n" only: str.splitlines would also break at U+2028 and the like, which JSON strings may hold raw.
    """
    out = []
    for n, line in enumerate(read_text(path).split("\n"), 1):
        if line.strip():
            out.append((n, _json(line, f"{path}: line {n} is")))
    return out


def load_jsonl(path: str | os.PathLike) -> list[Any]:
    """One JSON value per non-blank line (`load_jsonl_lines` without the line numbers)."""
    return [value for _, value in load_jsonl_lines(path)]


def field(record: Any, name: str, kind: type | tuple[type, ...], where: str) -> Any:
    """record[name], checked to exist and to be of `kind`; `where` names file and record index for the error."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if name not in record:
        raise DataError(f"{where}: missing field {name!r}")
    value = record[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        want = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise DataError(f"{where}: field {name!r} should be {want}, got {type(value).__name__}")
    return value


# ----------------------------------------------------------------------------------------------------------------
# A policy turn on the host is read by `parse_turn` (`sandbox.turns`, imported above): the one reader of every
# harness; the jitted sandbox's byte parser is defined by `sandbox.reference`, which shares its layout and JSON rules.


def is_refusal(turn: Turn) -> bool:
    """A refusal turn: no call, no check, well-formed, and answer text that the sandbox's refusal rule
    (`sandbox.refusal.detect_text`, the one the training reward uses) reads as a refusal."""
    return not turn.actions and not turn.unclosed and refusal.detect_text(turn.answer)


# ----------------------------------------------------------------------------------------------------------------
# Results.


def check_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """Metrics as plain floats; each must be a finite fraction in [0, 1]."""
    out = {}
    for k, v in metrics.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0.0 <= v <= 1.0:
            raise ValueError(f"metric {k!r} = {v!r} is not a fraction in [0, 1]")
        out[k] = float(v)
    return out


def markdown_table(metrics: Mapping[str, float], title: str = "metric") -> str:
    """A two-column markdown table, one row per metric in the given order; values as fractions and percents."""
    rows = [f"| {title} | value | % |", "|---|---:|---:|"]
    rows += [f"| {k} | {v:.4f} | {100 * v:.1f} |" for k, v in metrics.items()]
    return "\n".join(rows)


def write_results(path: str | os.PathLike, metrics: Mapping[str, float]) -> None:
    """Write `{metric: fraction}` as JSON (keys in the given order)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(check_metrics(metrics), indent=1) + "\n", encoding="utf-8")


def write_jsonl(path: str | os.PathLike, records: Iterable[Mapping[str, Any]]) -> None:
    """One JSON object per line, ASCII-escaped: details quote model output, which may hold lone surrogates that no
    UTF-8 writer can encode (escaped, they round-trip through `json.loads`)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="ascii") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=True) + "\n")


def ratio(num: int, den: int) -> float | None:
    """num / den, or None when den is 0 (the official scripts print '-'; such metrics are left out)."""
    return num / den if den else None
