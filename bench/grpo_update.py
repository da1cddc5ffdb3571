"""GRPO update speed: each group's prompt run once (`grpo.share_prompt`) against every row run in full.

Both sides run `steps.grpo_update` (mu 1, the config's minibatch and microbatch sizes, its beta and temperature) on
the same rollout batch, in the same process, interleaved, each compiled before timing; the best of `--repeats` is
reported. The batch is a GRPO step's: `grpo.n_scenarios` train scenarios, each repeated `grpo.group_size` times,
episodes from the sandbox's scripted policies (one drawn per row from `--policies`, so a group holds calls,
refusals and checks of different lengths, as sampled groups do), random behaviour log-probs and advantages.
Full side: `rollout.trim` (rows left-aligned, width the longest row's); shared side: `rollout.share_prompts`.
The model is the config's: `configs/tiny.py` (random weights) by default, `--config configs/smollm2.py` for
SmolLM2-135M-Instruct's weights and tokenizer. Correctness: both layouts' log-probs of one group's policy tokens
are compared (printed; exit status 1 beyond 1e-3).

  python bench/grpo_update.py
  python bench/grpo_update.py --config configs/smollm2.py --config.data.n_train=64 \
      --config.grpo.n_scenarios=4 --config.grpo.group_size=8 --repeats=1
"""
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

from agent_rl import cli, lora, rollout, setup, steps
from sandbox import compile as compile_lib
from sandbox import types as T

_CONFIG = cli.define_config_file(
    "config", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "tiny.py"),
    "ml_collections config file (its model, tokenizer, data and grpo fields are used)")
flags.DEFINE_list("policies", ["always_execute", "oracle", "always_refuse", "always_check"],
                  "scripted policies the rows' episodes are drawn from, uniformly")
flags.DEFINE_integer("repeats", 3, "timed updates per side (the best is reported)")
FLAGS = flags.FLAGS


def main(_):
    cfg = _CONFIG.value
    cfg.data.update(n_heldout=8, n_iid=0)  # unused: keep set-up short
    s = setup.make_setup(cfg)
    n, g = cfg.grpo.n_scenarios, cfg.grpo.group_size
    batch = rollout.repeat_group(rollout.trim_prompts(compile_lib.take(s.train, np.arange(n))), g)
    pid = np.random.default_rng(0).choice([T.POLICIES.index(p) for p in FLAGS.policies], n * g).astype(np.int32)
    traj = rollout.scripted_episodes(jnp.asarray(pid), batch, s.vocab, jax.random.key(0), s.env_params,
                                     max_new_tokens=s.env_params.max_tokens)
    rng = np.random.default_rng(1)
    policy = np.asarray(traj.policy_mask)
    traj = traj._replace(logprobs=np.where(policy, -rng.random(policy.shape) * 2, 0.0).astype(np.float32),
                         env_state=None)
    full = rollout.trim(jax.tree.map(np.asarray, traj))
    shared = rollout.share_prompts(full, np.asarray(batch.prompt_len), g)
    adv = jnp.asarray(rng.normal(size=n * g), jnp.float32)

    model = setup.build_model(cfg, s.model_cfg)
    graphdef, params, frozen = lora.split(model)
    del model
    hp = steps.GrpoHP.from_config(cfg.grpo)
    tx = steps.make_optimizer(cfg.grpo.lr, 0.0)  # a constant rate: the schedule does not change the timing
    opt_state = jax.jit(tx.init)(params)
    real = int(full.valid.sum())
    print(f"model {s.model_cfg.n_params / 1e6:.2f}M params ({cfg.model.hf_dir or 'random, ' + cfg.model.preset}); "
          f"{n} groups x {g} rows, minibatch {hp.minibatch_size}, microbatch {hp.microbatch}, beta {hp.beta:g}; "
          f"{real} real tokens ({int(full.policy_mask.sum())} policy), prompts {int(batch.prompt_len.min())}-"
          f"{int(batch.prompt_len.max())} tokens", flush=True)
    print(f"  full:   rows {full.tokens.shape} = {full.tokens.size} token slots", flush=True)
    print(f"  shared: prompts {shared.prefix.shape} + rows {shared.tokens.shape} = "
          f"{shared.prefix.size + shared.tokens.size} token slots", flush=True)

    # Both layouts' log-probs of the first group's tokens (the reference's forward), compared on policy tokens.
    m = lora.full_state(params, frozen)
    logprobs = jax.jit(lambda p, t, v, *prompt: steps.sequence_logprobs(  # prompt: (prefix, prefix_valid) or none
        nnx.merge(graphdef, p), t, v, hp.temperature, *prompt)[0])
    lp_full = logprobs(m, full.tokens[:g], full.valid[:g])
    lp_sh = logprobs(m, shared.tokens[:g], shared.valid[:g], shared.prefix[:1], shared.prefix_valid[:1])
    a = np.asarray(lp_full)[np.asarray(full.policy_mask[:g])]
    b = np.asarray(lp_sh)[np.asarray(shared.policy_mask[:g])]
    err = float(np.abs(a - b).max())
    print(f"  max |log-prob difference| over group 0's {a.size} policy tokens: {err:.2e}", flush=True)

    def update(batch):
        t0 = time.perf_counter()
        out = steps.grpo_update(graphdef, *jax.tree.map(jnp.copy, (params, opt_state)), params, batch, adv,
                                jax.random.key(0), frozen, tx=tx, hp=hp)
        jax.block_until_ready(out)
        return time.perf_counter() - t0

    sides = {"full": jax.tree.map(jnp.asarray, full), "shared": jax.tree.map(jnp.asarray, shared)}
    first_s = {k: update(v) for k, v in sides.items()}  # compile
    best = {k: float('inf') for k in sides}
    for _ in range(FLAGS.repeats):
        for k, v in sides.items():
            best[k] = min(best[k], update(v))
    for k in sides:
        print(f"  {k:7s} first call {first_s[k]:.2f} s, best {best[k]:.3f} s: {real / best[k]:,.0f} real tokens/s",
              flush=True)
    print(f"shared / full: {best['full'] / best['shared']:.2f}x", flush=True)
    if err > 1e-3:
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
