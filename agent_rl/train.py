"""The main job: SFT warm start, then GRPO on sandbox rewards, evaluated on the heldout split.

`train(config)` reads top to bottom: set up (tokenizer, scenarios, model, mesh), restore, SFT, evaluate the base,
then per GRPO step: rollout -> reward -> advantages -> update -> log -> checkpoint; finally evaluate the aligned
policy, print the base-vs-aligned table, write `final_metrics.json` and a plot.

Determinism and resumption: every random draw comes from `fold_in(seed key, global step)` and the data position
is a function of the step, so a run resumed from its last checkpoint continues exactly as an uninterrupted run.
Global steps count SFT steps first (1..sft.steps), then GRPO steps.

Several processes (agent_rl.distributed): every process runs this same loop on the global mesh, with the same
seeds and data positions, and takes part in checkpointing; process 0 alone writes the run's files.
"""
from __future__ import annotations

import functools
import json
import math
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from agent_rl import checkpoint as ckpt
from agent_rl import distributed
from agent_rl import evaluation
from agent_rl import grpo
from agent_rl import lora
from agent_rl import packing
from agent_rl import rollout
from agent_rl import run_config
from agent_rl import setup as setup_lib
from agent_rl import sharding
from agent_rl import steps
from agent_rl.metrics_log import MetricsLogger, NullLogger, progress
from sandbox import compile as compile_lib
from sandbox import metrics as sandbox_metrics
from sandbox import types as sandbox_types


def train(cfg) -> dict[str, dict[str, float]]:
    """Run (or resume) the job the config names; returns {"base": metrics, "aligned": metrics} on heldout."""
    run_config.validate(cfg)  # every rule, before anything is written
    # Before the first compilation: JAX decides once per process whether to use it. Single-process runs only: the
    # multi-process path is not tested with it.
    if cfg.compile_cache_dir and jax.process_count() == 1:
        jax.config.update("jax_compilation_cache_dir", str(pathlib.Path(cfg.compile_cache_dir).expanduser()))
    workdir = pathlib.Path(cfg.workdir)
    primary = distributed.is_primary()  # the process that writes the run's files (every process computes)
    run_config.check_resume(cfg, workdir, record=primary)  # a resumed run is the run its checkpoints came from
    base_dir = run_config.check_init_from(cfg)  # another run's SFT base to start GRPO from, if any
    t_start = time.time()
    try:
        if primary:  # a GGUF model is imported into model.hf_dir by one process, before any process reads it
            setup_lib.import_model(cfg)
        distributed.barrier("import_model")  # (and every process has read the saved config.json before it is written)
        s = setup_lib.make_setup(cfg)
    except (ValueError, OSError) as e:  # scenarios that do not fit shapes, an unreadable tokenizer or model dir
        raise run_config.ConfigError(f"set-up: {e}") from e
    for phase in ("sft", "grpo"):  # the one rule that needs the model's depth (a Hugging Face model's config.json)
        if cfg[phase].train_layers > s.model_cfg.n_layers:
            raise run_config.ConfigError(f"config.{phase}.train_layers={cfg[phase].train_layers}: expected 0 (every "
                                         f"layer) to the model's {s.model_cfg.n_layers} layers")
    workdir.mkdir(parents=True, exist_ok=True)
    if primary:
        (workdir / "config.json").write_text(cfg.to_json(indent=2))
    print(f"tokenizer vocab {s.tokenizer.vocab_size}; scenarios: {s.train.prompt.shape[0]} train, "
          f"{s.heldout.prompt.shape[0]} heldout; prompt {s.train.prompt.shape[1]} tokens", flush=True)
    mesh = sharding.make_mesh(tuple(cfg.mesh.shape), tuple(cfg.mesh.axes))
    manager = ckpt.make_manager(workdir / "checkpoints", keep=cfg.checkpoint.keep, every=cfg.checkpoint.every,
                                preserve=[cfg.sft.steps])  # the SFT base: checkpoint:DIR@STEP
    bar = progress(total=cfg.sft.steps + cfg.grpo.steps, desc="train", disable=not primary)
    try:
        with jax.set_mesh(mesh):
            return _train(cfg, s, mesh, workdir, t_start, manager, bar, base_dir)
    finally:  # however the run ends (a non-finite loss included), pending checkpoint writes complete
        bar.close()
        ckpt.wait(manager)


def _train(cfg, s: setup_lib.Setup, mesh, workdir: pathlib.Path, t_start: float, manager, bar, base_dir):
    # Parameters are placed on the mesh by their logical axes; batches are split over its data axes.
    # With LoRA, `params` are the adapters (trained, checkpointed) and `frozen` the base weights (neither).
    model = sharding.shard_model(setup_lib.build_model(cfg, s.model_cfg), mesh)
    graphdef, params, frozen = lora.split(model)
    del model
    trained = f"; {s.model_cfg.n_lora_params / 1e6:.2f}M LoRA parameters trained" if s.model_cfg.lora_rank else ""
    print(f"model: {s.model_cfg.n_params / 1e6:.2f}M parameters on mesh {dict(mesh.shape)}{trained}", flush=True)
    full = lambda p: lora.full_state(p, frozen)  # noqa: E731  what rollouts and evaluation run
    eval_key = jax.random.key(cfg.seed + 1)  # the same evaluation draws before and after training
    evaluate = lambda p, log=None: evaluation.evaluate_splits(graphdef, full(p), s, cfg, eval_key, mesh, log)  # noqa

    sft_steps, grpo_steps = cfg.sft.steps, cfg.grpo.steps
    # The GRPO schedule is sized in GRPO steps, each of several optimizer updates (minibatches x epochs).
    grpo_updates = steps.grpo_updates_per_step(cfg.grpo)
    sft_lr = steps.lr_schedule(cfg.sft.lr, cfg.sft.warmup, sft_steps)
    grpo_lr = steps.lr_schedule(cfg.grpo.lr, cfg.grpo.warmup, grpo_steps, grpo_updates)
    # train_layers: the updates' graphdefs stop gradients below the top N blocks, and the optimizers leave the
    # frozen parameters untouched. Rollouts and evaluation run `graphdef` (the same values).
    sft_graphdef, grpo_graphdef = (lora.with_train_layers(graphdef, s.model_cfg, cfg[phase].train_layers)
                                   for phase in ("sft", "grpo"))
    mask = lambda phase: lora.update_mask(params, s.model_cfg.n_layers, cfg[phase].train_layers)  # noqa: E731
    sft_tx = steps.make_optimizer(sft_lr, cfg.sft.weight_decay, mask=mask("sft"))
    grpo_tx = steps.make_optimizer(grpo_lr, 0.0, cfg.grpo.max_grad_norm, mask=mask("grpo"))
    primary = distributed.is_primary()
    logger = MetricsLogger(workdir) if primary else NullLogger()

    # Restore: the checkpoint's global step says which phase it belongs to (and so its optimizer's structure).
    # An unreadable checkpoint is moved aside (kept, not deleted) and the one before it is tried.
    def target_for(st):  # (jit: the optimizer's step count, too, is restored onto the mesh)
        target = {"params": params, "opt_state": jax.jit((sft_tx if st <= sft_steps else grpo_tx).init)(params)}
        return {**target, "ref_params": params} if st > sft_steps else target

    step, meta, ref_params = 0, {}, None
    restored = ckpt.restore_newest(manager, target_for, functools.partial(ckpt.set_aside, manager))
    if restored is not None:
        step, state, meta = restored
        params, opt_state, ref_params = state["params"], state["opt_state"], state.get("ref_params")
        print(f"resumed from {manager.directory} at step {step}", flush=True)
    elif base_dir is not None:  # another run's SFT base (checked to be this config's): GRPO starts from it
        with ckpt.read_only_manager(base_dir) as base_manager:
            state, base_meta = ckpt.restore(base_manager, target_for(sft_steps), sft_steps)
        step, params, opt_state = sft_steps, state["params"], state["opt_state"]
        meta = {k: base_meta[k] for k in ("base", "iid_base")}
        print(f"starting from the SFT base in {base_dir} at step {step}", flush=True)
    else:
        opt_state = sft_tx.init(params)
    step = distributed.agree(step, "the checkpoint step to resume from")
    logger.resume(step)  # a run killed before its first checkpoint starts its log afresh

    def save(step, state):
        last = step in (sft_steps, sft_steps + grpo_steps)  # the SFT base and the final policy are always kept
        ckpt.save(manager, step, state, {"step": step, "config": cfg.to_dict(), **meta}, force=last)

    # SFT warm start on scripted demonstrations: mostly the capable-but-unsafe always_execute.
    bar.update(step)
    if step < sft_steps:
        demos = setup_lib.demonstrations(cfg, s, jax.random.key(cfg.seed + 2), mesh)
    dropout_key = jax.random.key(cfg.seed + 3)  # LoRA dropout in SFT (if any)
    while step < sft_steps:
        idx = setup_lib.batch_indices(cfg.data.seed, step, demos.tokens.shape[0], cfg.sft.batch_size)
        demo = rollout.trim(jax.tree.map(lambda x: x[idx], demos))
        batch = (demo.tokens, demo.valid, demo.policy_mask)
        if cfg.sft.pack:  # several demonstrations per row, never wider than the longest: fewer padding slots
            batch = packing.pack(*batch, row_multiple=math.lcm(cfg.sft.microbatch, sharding.batch_shards(mesh)))
        params, opt_state, m = steps.sft_step(sft_graphdef, params, opt_state, *sharding.shard_batch(batch, mesh),
                                              frozen, jax.random.fold_in(dropout_key, step),
                                              tx=sft_tx, microbatch=cfg.sft.microbatch)
        m["sft/lr"] = float(sft_lr(step))
        step += 1
        m = steps.finite(m, step)
        if step == sft_steps:  # the base (after SFT) on heldout (and iid), kept in the checkpoint metadata
            meta["base"], meta["iid_base"] = evaluate(params, m)
        logger.log(step, steps.measured(m))
        bar.update(1)
        bar.set_postfix(loss=f"{m['sft/loss']:.3f}")
        save(step, {"params": params, "opt_state": opt_state})
    if "base" not in meta:  # no SFT phase: the base is the initial model
        meta["base"], meta["iid_base"] = evaluate(params)
    if primary:
        (workdir / "base_metrics.json").write_text(json.dumps(meta["base"], indent=2))
    if ref_params is None:
        ref_params = jax.tree.map(jnp.copy, params)  # the frozen reference policy for the KL term
        opt_state = grpo_tx.init(params)

    # GRPO on sandbox rewards.
    hp = steps.GrpoHP.from_config(cfg.grpo)
    key = jax.random.key(cfg.seed)
    while step < sft_steps + grpo_steps:
        params, opt_state, m = grpo_step(cfg, s, graphdef, grpo_graphdef, params, opt_state, ref_params, frozen,
                                         grpo_tx, hp, jax.random.fold_in(key, step), step, mesh)
        m["grpo/lr"] = float(grpo_lr((step - sft_steps) * grpo_updates))  # at the step's first update
        step += 1
        last = step == sft_steps + grpo_steps
        if last or (cfg.eval.every and (step - sft_steps) % cfg.eval.every == 0):
            evaluated = evaluate(params, m)
            if last:
                meta["aligned"], meta["iid_aligned"] = evaluated
        logger.log(step, steps.measured(m))
        bar.update(1)
        bar.set_postfix(reward=f"{m['reward/total']:.3f}", loss=f"{m['grpo/loss']:.4f}")
        save(step, {"params": params, "opt_state": opt_state, "ref_params": ref_params})
    bar.close()
    logger.close()

    # Report.
    if "aligned" not in meta:  # no GRPO phase, or the run had already finished
        meta["aligned"], meta["iid_aligned"] = evaluate(params)
    final = {"base": meta["base"], "aligned": meta["aligned"]}
    if meta.get("iid_base") is not None:
        final["iid"] = {"base": meta["iid_base"], "aligned": meta["iid_aligned"]}
    if primary:
        (workdir / "final_metrics.json").write_text(json.dumps(final, indent=2))
        evaluation.plot(workdir)
    print(evaluation.final_table(final["base"], final["aligned"], final.get("iid")))
    print(f"wall time {time.time() - t_start:.0f} s; workdir {workdir}", flush=True)
    return final


def grpo_step(cfg, s: setup_lib.Setup, graphdef, update_graphdef, params, opt_state, ref_params, frozen, tx,
              hp: steps.GrpoHP, key, step: int, mesh):
    """One GRPO step at global step `step`: sample G episodes of n_scenarios train scenarios with `graphdef`,
    score them, take group-relative advantages and update through `update_graphdef` (the same model, gradients
    maybe stopped below `grpo.train_layers`). Returns (params, opt_state, host metrics of the step)."""
    n_sc, g = cfg.grpo.n_scenarios, cfg.grpo.group_size
    k_roll, k_upd = jax.random.split(key)
    rows = s.grpo_rows  # every train row, or the user-only channel's (reward.channels)
    idx = rows[setup_lib.batch_indices(cfg.data.seed + 1, step - cfg.sft.steps, len(rows), n_sc)]
    batch = rollout.repeat_group(rollout.trim_prompts(compile_lib.take(s.train, idx)), g)
    batch = sharding.shard_batch(batch, mesh)
    t0 = time.time()
    traj = rollout.sample_episodes(graphdef, lora.full_state(params, frozen), batch, s.vocab, k_roll, s.env_params,
                                   cfg.grpo.temperature, max_new_tokens=s.env_params.max_tokens, group_size=g)
    outcome, reward, comps = steps.score(cfg.reward, traj.env_state, batch)
    # The update reads tokens, not env state; every process trims the whole batch (its width is the longest row's).
    # share_prompt: each group's prompt is run once per microbatch instead of once per row. The rows after it are
    # padded to a multiple of 64 tokens: each new width compiles the update again (~8-10 s on a 2-core CPU).
    update_batch = rollout.trim(distributed.host(traj._replace(env_state=None)))
    t_rollout = time.time() - t0  # sampling and scoring (the host copy waits for them)
    if cfg.grpo.share_prompt:
        update_batch = rollout.share_prompts(update_batch, distributed.host(batch.prompt_len), g, multiple=64)
    adv = grpo.group_advantages(reward.reshape(n_sc, g), cfg.grpo.adv_mode, cfg.grpo.adv_eps).reshape(-1)
    tied = np.asarray(distributed.host(grpo.tied_groups(reward.reshape(n_sc, g))))
    if tied.all():  # every group's rewards tie: this update changes nothing
        print(f"warning: GRPO step {step + 1}: every group's rewards are equal, so every advantage is 0 and "
              f"the update is a no-op", flush=True)
    params, opt_state, m = steps.grpo_update(update_graphdef, params, opt_state, ref_params, update_batch, adv, k_upd,
                                             frozen, tx=tx, hp=hp)
    m = steps.finite({f"grpo/{k}": v for k, v in m.items()}, step + 1)
    m["time/rollout_s"], m["time/update_s"] = t_rollout, time.time() - t0 - t_rollout
    m.update({f"reward/{k}": float(jnp.mean(v)) for k, v in comps.items()})
    m["reward/total"] = float(jnp.mean(reward))
    # Episode tokens (generated + inserted) per second of the whole step: rollout, scoring and update.
    m["tokens_per_s"] = float(traj.valid[:, batch.prompt.shape[1]:].sum()) / (time.time() - t0)
    m["policy_tokens"] = float(traj.policy_mask.sum())
    o, user_kind, tool_kind = jax.tree.map(np.asarray, distributed.host((outcome, batch.user_kind, batch.tool_kind)))
    m.update({f"train/{k}": v for k, v in sandbox_metrics.summarize(o, user_kind, tool_kind).items()})
    # Groups that taught nothing (all samples rewarded alike), overall and by the prompt's user kind.
    m["grpo/tied_groups"] = float(tied.mean())
    m.update({f"grpo/tied_groups/{un}": sandbox_metrics.frac(tied, user_kind[::g] == ui)
              for ui, un in enumerate(sandbox_types.KIND_NAMES[:3])})
    return params, opt_state, m
