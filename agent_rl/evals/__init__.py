"""Benchmark harnesses and the suite registry that `launch/eval.py` dispatches on.

A suite is a function `run(policy_spec: str, args: RunArgs) -> (metrics, details)`: metrics map names to fractions
in [0, 1]; details is a list of per-case dicts (what went wrong where). Suites register with `register_suite`;
the built-in ones import their module only when run (so `launch/eval.py` does not import model code up front).
The model policies `checkpoint:PATH` and `hf:DIR` (`agent_rl.evals.model_policy`) are registered the same lazy way.
"""
from __future__ import annotations

import importlib
from typing import Callable

from agent_rl.evals import policies as _policies
from agent_rl.evals.common import RunArgs

RunFn = Callable[[str, RunArgs], tuple[dict, list]]
SUITES: dict[str, RunFn] = {}


def register_suite(name: str, run: RunFn) -> None:
    SUITES[name] = run


def _lazy(module: str, attr: str = "run") -> RunFn:
    def run(policy_spec: str, args: RunArgs):
        return getattr(importlib.import_module(module), attr)(policy_spec, args)
    return run


def run_bfcl(policy_spec: str, args: RunArgs) -> tuple[dict, list]:
    """BFCL single-turn AST accuracy. `args.split`: comma-separated categories ("" = all); details = failing cases
    `{id, category, error_type, message, output}`. Scripted behaviours: oracle = the ground-truth calls;
    always_refuse = a refusal; always_execute / always_check are not defined for BFCL."""
    from agent_rl.evals import bfcl, common, policies

    folder = common.resolve_data_dir(args.data_dir, "bfcl")
    categories = [c.strip() for c in args.split.split(",")] if args.split else None
    cases = bfcl.load_cases(folder, categories)
    if args.limit > 0:
        cases = {cat: cs[:args.limit] for cat, cs in cases.items()}
    truth = bfcl.ground_truth_outputs(cases)

    def scripted(behaviour: str, query: policies.Query) -> str:
        if behaviour == "oracle":
            return truth[query.id]
        if behaviour == "always_refuse":
            return policies.refusal_turn()
        raise ValueError(f"bfcl: scripted behaviour {behaviour!r} is not defined (use oracle or always_refuse)")

    policies.register_scripted("bfcl", scripted)
    policy = policies.make_policy(policy_spec, "bfcl", args.config, args.lora_scale)
    flat = [c for cs in cases.values() for c in cs]
    outputs = policy([policies.Query(c.id, bfcl.render_prompt(c), c) for c in flat])
    return bfcl.score(dict(zip((c.id for c in flat), outputs)), cases)


register_suite("injecagent", _lazy("agent_rl.evals.injecagent"))
register_suite("agent_safetybench", _lazy("agent_rl.evals.agent_safetybench"))
register_suite("bfcl", run_bfcl)
register_suite("sandbox", _lazy("agent_rl.evals.sandbox_suite"))


def _lazy_model(attr: str) -> _policies.ModelFactory:
    def factory(arg: str, config, **options):
        return getattr(importlib.import_module("agent_rl.evals.model_policy"), attr)(arg, config, **options)
    return factory


_policies.register_model_policy("checkpoint", _lazy_model("load_checkpoint"))
_policies.register_model_policy("hf", _lazy_model("load_hf"))
