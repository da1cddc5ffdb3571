"""Benchmark harnesses and the suite registry that `launch/eval.py` dispatches on.

A suite is a function `run(policy_spec: str, args: RunArgs) -> (metrics, details)`: metrics map names to fractions
in [0, 1]; details is a list of per-case dicts (what went wrong where). Suites register with `register_suite`;
the built-in ones are the `run` of their module (bfcl, injecagent, agent_safetybench, sandbox_suite), imported only
when run (so `launch/eval.py` does not import model code up front).
The model policies `checkpoint:PATH`, `hf:DIR` and `lora:DIR` (`agent_rl.evals.model_policy`) are registered the
same lazy way.
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


register_suite("injecagent", _lazy("agent_rl.evals.injecagent"))
register_suite("agent_safetybench", _lazy("agent_rl.evals.agent_safetybench"))
register_suite("bfcl", _lazy("agent_rl.evals.bfcl"))
register_suite("sandbox", _lazy("agent_rl.evals.sandbox_suite"))


def _lazy_model(attr: str) -> _policies.ModelFactory:
    def factory(arg: str, config, **options):
        return getattr(importlib.import_module("agent_rl.evals.model_policy"), attr)(arg, config, **options)
    return factory


_policies.register_model_policy("checkpoint", _lazy_model("load_checkpoint"))
_policies.register_model_policy("hf", _lazy_model("load_hf"))
_policies.register_model_policy("lora", _lazy_model("load_lora"))
