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
import re
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

from sandbox import protocol, refusal

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
    safety_k: int = 0  # sandbox: episodes per scenario for safety@k (0: the config's eval.safety_k, else 4)
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


def load_json(path: str | os.PathLike) -> Any:
    path = pathlib.Path(path)
    if not path.is_file():
        raise DataError(f"missing file {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None


def load_jsonl(path: str | os.PathLike) -> list[Any]:
    """One JSON value per non-blank line; a bad line is reported by file and 1-based line number."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise DataError(f"missing file {path}")
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: line {n} is not valid JSON ({e})") from None
    return out


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
# Reading one policy turn on the host (benchmarks score text; the jitted sandbox has its own byte parser).


class Action(NamedTuple):
    """One `<tool_call>` or `<tool_check>` block of a turn, in the order written.

    kind: "call" or "check". name: the called / checked tool ("" if a call block is malformed).
    arguments: the call's arguments object (None for checks and malformed calls). raw: the block's content.
    error: why a call block is malformed ("" if well-formed).
    """
    kind: str
    name: str
    arguments: dict | None
    raw: str
    error: str = ""
    end: int = 0  # offset in the turn just past the closing tag


class Turn(NamedTuple):
    """A policy turn read as the protocol defines it.

    think: the `<think>` content ("" if none). actions: every closed block. answer: the action region with all
    blocks removed (the final answer / refusal text), stripped. unclosed: a block was opened and never closed.
    """
    text: str
    think: str
    actions: tuple[Action, ...]
    answer: str
    unclosed: bool
    action_start: int = 0  # where the action region (everything after the think block) starts in `text`

    @property
    def action_text(self) -> str:
        """The turn without its think block, stripped (what the agent shows the user)."""
        return self.text[self.action_start:].strip()

    @property
    def calls(self) -> tuple[Action, ...]:
        return tuple(a for a in self.actions if a.kind == "call")

    @property
    def checks(self) -> tuple[Action, ...]:
        return tuple(a for a in self.actions if a.kind == "check")

    @property
    def malformed(self) -> str:
        """Why the turn breaks the protocol ("" if it does not): an unclosed block or a call that is not
        `{"name": str, "arguments": {...}}` JSON."""
        if self.unclosed:
            return "unclosed block"
        bad = [a.error for a in self.calls if a.error]
        return f"malformed tool_call: {bad[0]}" if bad else ""

    @property
    def first_action(self) -> Action | None:
        return self.actions[0] if self.actions else None


_BLOCK = re.compile(re.escape(protocol.CALL_OPEN) + "|" + re.escape(protocol.CHECK_OPEN))


def _reject_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _parse_call(raw: str) -> tuple[str, dict | None, str]:
    """(name, arguments, error) of a call block's content; strict JSON (NaN / Infinity rejected)."""
    try:
        obj = json.loads(raw, parse_constant=_reject_constant)
    except ValueError as e:
        return "", None, f"not JSON ({e})"
    if not isinstance(obj, dict):
        return "", None, "not a JSON object"
    if not isinstance(obj.get("name"), str):
        return "", None, 'no string "name"'
    if not isinstance(obj.get("arguments"), dict):
        return obj["name"], None, 'no object "arguments"'
    return obj["name"], obj["arguments"], ""


def parse_turn(text: str) -> Turn:
    """Read one policy turn (text up to its `<|im_end|>`; anything after the first `<|im_end|>` is ignored).

    As `sandbox.reference` defines it: a turn that starts with `<think>` and has a `</think>` has its actions after
    the first `</think>`; otherwise the whole turn is the action region. Blocks are scanned left to right; each runs
    from its opening tag to the first matching closing tag after it.
    """
    text = text.split(protocol.IM_END, 1)[0]
    think, start = "", 0
    if text.startswith(protocol.THINK_OPEN):
        close = text.find(protocol.THINK_CLOSE, len(protocol.THINK_OPEN))
        if close >= 0:
            think = text[len(protocol.THINK_OPEN):close]
            start = close + len(protocol.THINK_CLOSE)
    actions, answer, pos, unclosed = [], [], start, False
    while True:
        m = _BLOCK.search(text, pos)
        if m is None:
            answer.append(text[pos:])
            break
        answer.append(text[pos:m.start()])
        is_call = m.group() == protocol.CALL_OPEN
        close_tag = protocol.CALL_CLOSE if is_call else protocol.CHECK_CLOSE
        close = text.find(close_tag, m.end())
        if close < 0:
            unclosed = True
            break
        raw, end = text[m.end():close], close + len(close_tag)
        if is_call:
            name, args, err = _parse_call(raw)
            actions.append(Action("call", name, args, raw, err, end))
        else:
            actions.append(Action("check", raw.strip(), None, raw, "", end))
        pos = end
    return Turn(text, think, tuple(actions), "".join(answer).strip(), unclosed, start)


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
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def ratio(num: int, den: int) -> float | None:
    """num / den, or None when den is 0 (the official scripts print '-'; such metrics are left out)."""
    return num / den if den else None
