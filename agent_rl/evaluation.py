"""The one evaluation path: a policy (scripted or model) run through the jitted env on a split of scenarios, the
outcomes summarised as named sandbox metrics. Training evaluates its base and aligned policies with `evaluate`; the
sandbox suite (`agent_rl.evals.sandbox_suite`) runs `run_episodes` with any policy and k samples per scenario.
"""
from __future__ import annotations

import math
import pathlib
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from agent_rl import distributed
from agent_rl import plots
from agent_rl import rollout
from agent_rl import sharding
from agent_rl.metrics_log import read_jsonl
from sandbox import compile as compile_lib
from sandbox import env as env_lib
from sandbox import metrics as sandbox_metrics
from sandbox import types as T

# episodes(batch Scenario [B, ...], key, temperature) -> Trajectory
Episodes = Callable[[T.Scenario, jax.Array, float], rollout.Trajectory]


def scripted_episodes(policy_id: int, vocab: T.Vocab, env_params: T.EnvParams) -> Episodes:
    """A scripted policy's episodes (`sandbox.types.POLICIES[policy_id]`): reference numbers without a model."""
    def episodes(batch, key, temperature):
        del temperature  # scripted turns are fixed; only the simulated user's check answers are drawn
        ids = jnp.full((batch.prompt.shape[0],), policy_id, jnp.int32)
        return rollout.scripted_episodes(ids, batch, vocab, key, env_params, max_new_tokens=int(env_params.max_tokens))
    return episodes


def model_episodes(graphdef, params, vocab: T.Vocab, env_params: T.EnvParams, mesh=None) -> Episodes:
    """The model's episodes; prompt columns that are padding in the whole batch are dropped first, and with `mesh`
    the batch is split over its data axes."""
    def episodes(batch, key, temperature):
        batch = rollout.trim_prompts(batch)
        batch = batch if mesh is None else sharding.shard_batch(batch, mesh)
        return rollout.sample_episodes(graphdef, params, batch, vocab, key, env_params, jnp.float32(temperature),
                                       max_new_tokens=int(env_params.max_tokens))
    return episodes


@jax.jit
def _outcome(env_state, scenario):
    return jax.vmap(env_lib.outcome)(env_state, scenario)


def run_episodes(episodes: Episodes, scenario: T.Scenario, per_call: int, key: jax.Array, temperature: float,
                 k: int = 1, *, new_tokens: int) -> tuple[T.Outcome, np.ndarray, np.ndarray]:
    """k episodes of every scenario, `per_call` episodes a call (a multiple of k; one compiled shape: the last call
    repeats its last scenario, and the copies are dropped).

    Returns (outcome with numpy arrays [N * k], scenario-major: the k episodes of scenario i are rows i*k .. i*k+k-1;
    tokens int32[N * k, T] and valid bool[N * k, T]: the last T = `new_tokens` columns of each trajectory, what was
    emitted after the (possibly trimmed) prompt: the rollout's max_new_tokens)."""
    n = scenario.prompt.shape[0]
    if per_call % k:
        raise ValueError(f"run_episodes: per_call={per_call} is not a multiple of k={k}")
    per = per_call // k  # scenarios per call
    outs, toks, valids = [], [], []
    for i in range(0, n, per):
        idx = np.arange(i, min(i + per, n))
        idx = np.pad(idx, (0, per - idx.size), mode="edge")
        batch = compile_lib.take(scenario, idx)
        if k > 1:
            batch = rollout.repeat_group(batch, k)
        traj = episodes(batch, jax.random.fold_in(key, i), temperature)
        keep = min(per, n - i) * k
        # On a mesh over several processes the episodes are spread over them: every process reads all of them.
        outcome, tokens, valid = distributed.host((_outcome(traj.env_state, batch), traj.tokens, traj.valid))
        outs.append(jax.tree.map(lambda x: np.asarray(x)[:keep], outcome))
        toks.append(np.asarray(tokens)[:keep, tokens.shape[1] - new_tokens:])
        valids.append(np.asarray(valid)[:keep, valid.shape[1] - new_tokens:])
    outcome = jax.tree.map(lambda *xs: np.concatenate(xs), *outs)
    return outcome, np.concatenate(toks), np.concatenate(valids)


def evaluate(graphdef, params, scenarios: T.Scenario, vocab: T.Vocab, env_params: T.EnvParams, eval_cfg, key,
             mesh=None) -> dict[str, float | None]:
    """Named sandbox metrics (sandbox.metrics.summarize) of the model on every scenario of a split, one episode each
    at eval_cfg.temperature (greedy: 0), eval_cfg.batch_size episodes a call (with `mesh`, rounded up to a multiple
    of its data-parallel size). A metric with no qualifying episode
    (e.g. injection success when no tool response was reached) is None."""
    episodes = model_episodes(graphdef, params, vocab, env_params, mesh)
    per_call = int(eval_cfg.batch_size)
    if mesh is not None:  # a call's episodes split evenly over the mesh's data axes (padding rows are dropped)
        shards = sharding.batch_shards(mesh)
        per_call = -(-per_call // shards) * shards
    outcome, _, _ = run_episodes(episodes, scenarios, per_call, key, eval_cfg.temperature,
                                 new_tokens=int(env_params.max_tokens))
    m = sandbox_metrics.summarize(outcome, np.asarray(scenarios.user_kind), np.asarray(scenarios.tool_kind))
    return {k: (v if math.isfinite(v) else None) for k, v in m.items()}


def evaluate_splits(graphdef, params, s, cfg, key, mesh, log: dict | None = None):
    """(heldout metrics, iid metrics or None) of a run's Setup `s`; with `log`, also adds them to it as `eval/...`
    and `eval_iid/...`."""
    out = []
    for prefix, scenarios in (("eval", s.heldout), ("eval_iid", s.iid)):
        metrics = None if scenarios is None else evaluate(graphdef, params, scenarios, s.vocab, s.env_params,
                                                          cfg.eval, key, mesh)
        if log is not None and metrics is not None:
            log.update({f"{prefix}/{k}": v for k, v in metrics.items() if v is not None})
        out.append(metrics)
    return tuple(out)


def plot(workdir: pathlib.Path, prefix: str = "train/") -> None:
    """Safety and utility against GRPO steps, from metrics.jsonl: `train/` are the rollout batches of each step,
    `eval/` the heldout evaluations (every `eval.every` steps). Metrics never measured are skipped."""
    records = read_jsonl(workdir / "metrics.jsonl")
    seen = {k for r in records for k in r}
    keep = lambda names: [n for n in names if f"{prefix}{n.removeprefix('1-')}" in seen]  # noqa: E731
    plots.plot_safety_utility(workdir / "metrics.jsonl", workdir / "safety_utility.png", safety=keep(plots.SAFETY),
                        utility=keep(plots.UTILITY), prefix=prefix)



def final_table(base: dict, aligned: dict, iid: dict | None = None) -> str:
    """Markdown: headline metrics, then per-cell decision accuracy, base (after SFT) vs aligned (after GRPO) on
    heldout, and on iid ({"base", "aligned"}) when given."""
    head = "| metric | heldout base (SFT) | heldout aligned (GRPO) |"
    rows = [head + (" iid base | iid aligned |" if iid else ""), "|---|---:|---:|" + ("---:|---:|" if iid else "")]
    keys = list(sandbox_metrics.HEADLINE) + sorted(k for k in base if k.startswith("cell/"))
    for k in keys:
        cols = [base, aligned] + ([iid["base"], iid["aligned"]] if iid else [])
        if any(c.get(k) is not None for c in cols):
            rows.append(f"| {k} | " + " | ".join(sandbox_metrics.fmt(c.get(k)) for c in cols) + " |")
    return "\n".join(rows)

