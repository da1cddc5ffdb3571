"""Named variants side by side: every (variant, suite) result kept in one file, and the tables that compare them.

    results = compare.load(path)                     # {"variants": {}, "settings": {}} if the file does not exist
    compare.record(results, "ours", "lora:models/ours", 1.0, "bfcl", metrics, compare.settings_key(run_args))
    compare.save(path, results)
    print(compare.tables(results))                               # one markdown table per suite, variants as rows

The file is the layout `docs/results_<model>.json` uses:
    {"variants": {NAME: {"policy": SPEC, "lora_scale": s, "sandbox": {metric: fraction}, "bfcl": {...}, ...}},
     "settings": {SUITE: {what the suite was run with: split, limit, tool style, safety_k}}}
A suite's figures are only comparable across variants run with the same settings, so `record` never mixes them:
recording a suite with other settings starts that suite afresh for every variant (the old figures are dropped, and
said so). A (variant, suite) result already in the file with the same policy and settings is what `launch/compare.py`
skips on a re-run, so an interrupted evaluation of several variants resumes where it stopped.
"""
from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Mapping

from agent_rl.evals import common

# The columns of each suite's table, in this order (metrics a run did not produce are left out; the JSON keeps all).
COLUMNS = {
    "sandbox": ("malicious_refusal", "sensitive_verification", "injection_success", "benign_success",
                "over_refusal", "over_verification", "safety_at_k"),
    "injecagent": tuple(f"{setting}/{attack}/{m}" for setting in ("base", "enhanced")
                        for attack, m in (("dh", "asr_valid"), ("ds", "asr_valid"), ("total", "asr_valid"),
                                          ("total", "asr_all"), ("total", "valid_rate"))),
    "bfcl": ("non_live/overall", "simple_python/accuracy", "multiple/accuracy", "parallel/accuracy",
             "parallel_multiple/accuracy", "irrelevance/accuracy", "live/overall", "live_simple/accuracy",
             "live_multiple/accuracy", "live_parallel/accuracy", "live_parallel_multiple/accuracy",
             "live_irrelevance/accuracy", "live_relevance/accuracy"),
    "agent_safetybench": ("proxy/safe_rate", "proxy/safe_rate_fulfillable", "proxy/safe_rate_unfulfillable"),
}
TITLES = {"sandbox": "Sandbox (heldout)", "injecagent": "InjecAgent", "bfcl": "BFCL (AST accuracy)",
          "agent_safetybench": "Agent-SafetyBench (proxy metrics, no judge)"}


class ResultsError(ValueError):
    """A results file that is not the layout above; the message names the file and the key."""


def settings_key(args: common.RunArgs) -> dict[str, Any]:
    """What makes two runs of a suite comparable (the policy and its LoRA scale are the variant's own)."""
    return {"split": args.split, "limit": int(args.limit), "tool_style": args.tool_style,
            "safety_k": int(args.safety_k), "judge": bool(args.judge_dir)}


def load(path: str | os.PathLike) -> dict:
    """The results in `path`, checked; an empty results dict if the file does not exist."""
    path = pathlib.Path(path)
    if not path.exists():
        return {"variants": {}, "settings": {}}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ResultsError(f"{path}: not readable JSON ({e})") from e
    if not isinstance(data, dict) or not isinstance(data.get("variants"), dict):
        raise ResultsError(f"{path}: expected an object with a 'variants' object")
    data.setdefault("settings", {})
    for name, v in data["variants"].items():
        if not isinstance(v, dict) or not isinstance(v.get("policy"), str):
            raise ResultsError(f"{path}: variants.{name}: expected an object with a 'policy' string")
        for suite in COLUMNS:
            if suite in v:
                try:
                    common.check_metrics(v[suite])
                except (ValueError, AttributeError) as e:
                    raise ResultsError(f"{path}: variants.{name}.{suite}: {e}") from e
    return data


def save(path: str | os.PathLike, results: Mapping[str, Any]) -> None:
    """Write the results (atomically: an interrupted write leaves the previous file)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def has(results: Mapping[str, Any], name: str, policy: str, lora_scale: float, suite: str,
        settings: Mapping[str, Any]) -> bool:
    """Whether the results already hold this variant's figures for `suite`, from the same policy and settings."""
    v = results["variants"].get(name)
    return (v is not None and v.get("policy") == policy and v.get("lora_scale", 1.0) == lora_scale and suite in v
            and results["settings"].get(suite) == dict(settings))


def record(results: dict, name: str, policy: str, lora_scale: float, suite: str, metrics: Mapping[str, float],
           settings: Mapping[str, Any]) -> list[str]:
    """Put one (variant, suite) result into `results`. Returns what it dropped, as lines: a variant whose policy or
    scale changed loses its other suites' figures; a suite run with new settings loses every variant's figures."""
    dropped = []
    v = results["variants"].get(name)
    if v is not None and (v.get("policy"), v.get("lora_scale", 1.0)) != (policy, lora_scale):
        dropped += [f"{name}: {s} (policy was {v.get('policy')} at scale {v.get('lora_scale', 1.0)})"
                    for s in COLUMNS if s in v and s != suite]
        v = None
    if results["settings"].get(suite) not in (None, dict(settings)):
        for other, ov in results["variants"].items():
            if suite in ov and other != name:
                dropped.append(f"{other}: {suite} (run with {results['settings'][suite]})")
                del ov[suite]
    results["settings"][suite] = dict(settings)
    v = v if v is not None else {"policy": policy, "lora_scale": lora_scale}
    v[suite] = common.check_metrics(metrics)
    results["variants"][name] = v
    return dropped


def _cell(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def table(results: Mapping[str, Any], suite: str, order: list[str] | None = None) -> str:
    """One markdown table of `suite`: a row per variant that has its figures, the suite's COLUMNS in percent."""
    names = [n for n in (order or list(results["variants"])) if suite in results["variants"].get(n, {})]
    if not names:
        return ""
    present = [c for c in COLUMNS[suite] if any(c in results["variants"][n][suite] for n in names)]
    rows = ["| variant | policy | " + " | ".join(present) + " |", "|---|---|" + "---:|" * len(present)]
    for n in names:
        v = results["variants"][n]
        spec = v["policy"] + (f" (scale {v['lora_scale']:g})" if v.get("lora_scale", 1.0) != 1.0 else "")
        rows.append(f"| {n} | `{spec}` | " + " | ".join(_cell(v[suite].get(c)) for c in present) + " |")
    return "\n".join(rows)


def tables(results: Mapping[str, Any], order: list[str] | None = None) -> str:
    """Every suite's table, each under its title and the settings it was run with (figures in percent)."""
    out = []
    for suite in COLUMNS:
        t = table(results, suite, order)
        if t:
            s = results["settings"].get(suite, {})
            shown = ", ".join(f"{k} {v}" for k, v in s.items() if v not in ("", 0, False))
            out.append(f"### {TITLES[suite]}\n\n{t}\n\nSettings: {shown or 'the suite defaults'}; figures in percent.")
    return "\n\n".join(out)
