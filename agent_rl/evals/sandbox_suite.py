"""The sandbox suite: a policy run through the jitted environment on generated scenarios.

  python launch/eval.py --suite sandbox --policy oracle --out r.json                 # heldout split, 440 scenarios
  python launch/eval.py --suite sandbox --policy checkpoint:runs/tiny --split train --limit 110 --out r.json

Scenarios: `sandbox.generate.generate(data.seed, split, n)` with split `--split` (heldout by default) and n `--limit`
(440 by default: four per (cell, domain) pair), compiled with the policy's tokenizer. Settings (shapes, episode
rules, data seed, tool style, batch size, k) come from the first of: `--config`, the checkpoint's run config,
`configs/tiny.py`. Scripted policies (oracle, always_execute, always_refuse, always_check) need no model and use the
settings' tokenizer.

Metrics: `sandbox.metrics.summarize` of one greedy episode per scenario (those with no qualifying episode left out),
and `safety_at_k`: k episodes per scenario sampled at temperature 1 (scripted policies: k episodes that differ only
by the simulated user's answers to checks), the share of scenarios whose k episodes are all safe. Details: the
greedy episodes that got their cell wrong, with the generated text.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from agent_rl import evaluation
from agent_rl import setup as setup_lib
from agent_rl.evals import common, policies
from sandbox import catalogue, generate
from sandbox import compile as compile_lib
from sandbox import env as env_lib
from sandbox import metrics as sandbox_metrics
from sandbox import protocol
from sandbox import types as T

BENCHMARK = "sandbox"
DEFAULT_N = 440
DEFAULT_K = 4
SPLITS = ("heldout", "train")
HEADLINE = sandbox_metrics.HEADLINE + ("safety_at_k",)


def default_config():
    from configs import tiny

    return tiny.get_config()


def compile_scenarios(specs, tokenizer, shapes: T.Shapes, tool_style: str, safety: str | None = None) -> T.Scenario:
    """`compile_specs`, and with `safety` the prompt guard: every prompt's system message gets the safety text
    (the prompt width grows to fit, in multiples of 32)."""
    if safety is None:
        return compile_lib.compile_specs(specs, tokenizer, catalogue.CATALOGUE, shapes, tool_style)

    def system(s):
        return protocol.system_prompt([catalogue.CATALOGUE[n].schema() for n in s.tools],
                                      protocol.style_for(s.id, tool_style))

    prompts = [tokenizer.encode(policies.add_safety_prompt(protocol.chat_prefix(system(s), s.user_prompt), safety))
               for s in specs]
    width = max(shapes.prompt, -(-max(map(len, prompts)) // 32) * 32)
    sc = compile_lib.compile_specs(specs, tokenizer, catalogue.CATALOGUE, shapes._replace(prompt=width), tool_style)
    prompt = np.full((len(specs), width), tokenizer.pad_id, np.int32)
    for i, ids in enumerate(prompts):
        prompt[i, width - len(ids):] = ids
    return sc.replace(prompt=jnp.asarray(prompt), prompt_len=jnp.asarray([len(p) for p in prompts], jnp.int32))


def _settings(spec: str, args: common.RunArgs):
    """(cfg, tokenizer, episodes(vocab, env_params) factory, safety text or None) for a policy spec."""
    if spec in policies.SCRIPTED_BEHAVIOURS:
        cfg = args.config or default_config()
        pid = T.POLICIES.index(spec)
        episodes = lambda vocab, ep: evaluation.scripted_episodes(pid, vocab, ep)  # noqa: E731
        return cfg, setup_lib.build_tokenizer(cfg), episodes, None
    if spec.partition(":")[0] == "replay":
        raise policies.PolicyError("sandbox: replay policies cannot answer the environment turn by turn; use a "
                                   "scripted or model policy")
    from agent_rl.evals import model_policy

    model, safety = policies.make_text_policy(spec, args.config, args.lora_scale), None
    if isinstance(model, policies.PromptGuard):
        model, safety = model.model, model.safety
    if not isinstance(model, model_policy.ModelPolicy):
        raise policies.PolicyError(f"sandbox: policy {spec!r} is not a JAX model (checkpoint:PATH, hf:DIR, lora:DIR or "
                                   f"prompt_guard: of one); the sandbox runs the model through the jitted env")
    cfg = args.config or model.run_config or default_config()
    episodes = lambda vocab, ep: evaluation.model_episodes(model.graphdef, model.params, vocab, ep)  # noqa: E731
    return cfg, model.tokenizer, episodes, safety


class _Suite(NamedTuple):
    specs: list
    scenario: T.Scenario
    tokenizer: object
    episodes: evaluation.Episodes
    per_call: int
    key: jax.Array
    max_tokens: int


def _suite(policy_spec: str, args: common.RunArgs, k: int) -> _Suite:
    split = args.split or "heldout"
    if split not in SPLITS:
        raise common.DataError(f"sandbox: --split {split!r}; expected one of {SPLITS}")
    cfg, tok, make_episodes, safety = _settings(policy_spec, args)
    n = args.limit if args.limit > 0 else DEFAULT_N
    seed = int(cfg.data.seed)
    specs = generate.generate(seed, split, n)
    scenario = compile_scenarios(specs, tok, T.Shapes(**dict(cfg.shapes)), cfg.data.tool_style, safety)
    env_params = T.EnvParams(**dict(cfg.env))
    # Greedy and sampled calls run the same number of episodes, so the rollout compiles once.
    per_call = max(k, min(int(cfg.eval.batch_size), n * k) // k * k)
    return _Suite(specs, scenario, tok, make_episodes(env_lib.make_vocab(tok), env_params), per_call,
                  jax.random.key(seed + 1), int(env_params.max_tokens))


def _greedy(s: _Suite):
    return evaluation.run_episodes(s.episodes, s.scenario, s.per_call, jax.random.fold_in(s.key, 0), 0.0,
                                   new_tokens=s.max_tokens)


def run(policy_spec: str, args: common.RunArgs) -> tuple[dict, list[dict]]:
    """Suite entry: `args.split` "" (heldout) | "heldout" | "train"; `args.limit` scenarios (0: 440);
    `args.safety_k` episodes per scenario for safety_at_k (0: 4)."""
    k = args.safety_k or DEFAULT_K
    s = _suite(policy_spec, args, k)
    n = len(s.specs)
    greedy, tokens, valid = _greedy(s)
    user_kind, tool_kind = np.asarray(s.scenario.user_kind), np.asarray(s.scenario.tool_kind)
    summary = sandbox_metrics.summarize(greedy, user_kind, tool_kind)
    sampled, _, _ = evaluation.run_episodes(s.episodes, s.scenario, s.per_call, jax.random.fold_in(s.key, 1), 1.0, k,
                                            new_tokens=s.max_tokens)
    summary["safety_at_k"] = sandbox_metrics.safety_at_k(jax.tree.map(lambda x: x.reshape((n, k) + x.shape[1:]),
                                                                      sampled))
    groups = ("cell", "user_table", "tool_table")  # summarize interleaves the two tables; keep each together
    rank = lambda m: groups.index(m.split("/")[0]) if "/" in m else -1  # noqa: E731  (other rates first)
    order = list(HEADLINE) + sorted((m for m in summary if m not in HEADLINE), key=rank)
    metrics = {m: summary[m] for m in order if math.isfinite(summary[m])}
    return metrics, failures(s.specs, greedy, tokens, valid, s.tokenizer)


def transcripts(policy_spec: str, args: common.RunArgs) -> list[dict]:
    """Every greedy episode of the suite's scenarios (`args.split`, `args.limit`), as `failures` renders them, with
    the prompt's user request and a `correct` flag: what a policy does, to read."""
    s = _suite(policy_spec, args, 1)
    greedy, tokens, valid = _greedy(s)
    out = failures(s.specs, greedy, tokens, valid, s.tokenizer, only_wrong=False)
    for d, spec in zip(out, s.specs):
        d["request"] = spec.user_prompt
    return out


def failures(specs, outcome: T.Outcome, tokens: np.ndarray, valid: np.ndarray, tok,
             only_wrong: bool = True) -> list[dict]:
    """Greedy episodes that got their cell wrong (all of them with only_wrong=False): {id, cell, correct,
    user_decision, tool_decision, eos, harmful_call, output (everything emitted after the prompt, policy and
    environment turns alike)}."""
    ok = outcome.eos & outcome.user_correct & outcome.tool_correct
    out = []
    for i in np.flatnonzero(~ok) if only_wrong else range(len(specs)):
        s = specs[i]
        out.append({"id": s.id, "cell": f"{s.user_kind}/{s.tool_kind}", "correct": bool(ok[i]),
                    "user_decision": T.DECISION_NAMES[int(outcome.user_decision[i])],
                    "tool_decision": T.DECISION_NAMES[int(outcome.tool_decision[i])],
                    "eos": bool(outcome.eos[i]), "harmful_call": bool(outcome.harmful_call[i]),
                    "output": tok.decode(tokens[i][valid[i]].tolist())})
    return out
