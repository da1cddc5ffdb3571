"""SFT with packed rows (`packing.pack`) against one demonstration per row (`rollout.trim`), side by side.

The run's own demonstrations and batches (the config's mixture, `setup.batch_indices` for steps 0..--steps-1), the
model of the config at its initial weights. Each side first runs every batch once (compiling each shape it meets),
then the batches `--repeats` times more in alternation with the other side, timing whole passes; the best pass of
each side is reported. Both sides start every step from the same weights, so the losses must agree (printed, and the
exit status is 1 if any step's differ by more than 1e-4 relative): packing changes the work, not the result.

  python bench/sft_packing.py                                       # the default run's config (configs/tiny.py)
  python bench/sft_packing.py --config=configs/smollm2.py --steps=4 --repeats=1
"""
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from agent_rl import lora, packing, rollout, steps
from agent_rl import setup as setup_lib

config_flags.DEFINE_config_file("config", "configs/tiny.py", "the run whose demonstrations and model are timed")
flags.DEFINE_integer("steps", 16, "SFT batches timed (the run's first ones)")
flags.DEFINE_integer("packed_microbatch", 0, "rows per microbatch of the packed side (0: the config's "
                     "sft.microbatch); packed rows come in multiples of it")
flags.DEFINE_integer("max_width", 0, "widest packed row (0: the batch's longest demonstration, rounded up)")
flags.DEFINE_integer("repeats", 2, "timed passes over the batches per side (the best is reported)")
FLAGS = flags.FLAGS


def main(_):
  cfg = FLAGS.config
  s = setup_lib.make_setup(cfg)
  demos = setup_lib.demonstrations(cfg, s, jax.random.key(cfg.seed + 2))
  model = setup_lib.build_model(cfg, s.model_cfg)
  graphdef, params, frozen = lora.split(model)
  del model
  tx = steps.make_optimizer(steps.lr_schedule(cfg.sft.lr, cfg.sft.warmup, cfg.sft.steps), cfg.sft.weight_decay)
  opt_state = tx.init(params)
  mb = cfg.sft.microbatch
  pmb = FLAGS.packed_microbatch or mb

  plain, packed = [], []
  for step in range(FLAGS.steps):
    idx = setup_lib.batch_indices(cfg.data.seed, step, demos.tokens.shape[0], cfg.sft.batch_size)
    d = rollout.trim(jax.tree.map(lambda x: x[idx], demos))
    plain.append(tuple(map(jnp.asarray, (d.tokens, d.valid, d.policy_mask))))
    p = packing.pack(d.tokens, d.valid, d.policy_mask, row_multiple=pmb, max_width=FLAGS.max_width or None)
    packed.append(tuple(map(jnp.asarray, p)))
  slots = lambda batches: sum(b[0].size for b in batches)  # noqa: E731
  real = sum(int(b[1].sum()) for b in plain)
  shapes = lambda batches: sorted({b[0].shape for b in batches})  # noqa: E731
  print(f"{s.model_cfg.n_params / 1e6:.2f}M parameters; {FLAGS.steps} batches of {cfg.sft.batch_size} "
        f"demonstrations, microbatch {mb} (packed: {pmb}); real tokens {real:,}; slots one per row {slots(plain):,} "
        f"({slots(plain) / real:.2f}x real, shapes {shapes(plain)}), packed {slots(packed):,} "
        f"({slots(packed) / real:.2f}x, shapes {shapes(packed)})", flush=True)

  def timed(batches, mb):
    total, losses = 0.0, []
    for b in batches:
      p, o = jax.tree.map(jnp.copy, (params, opt_state))  # sft_step donates its state
      jax.block_until_ready((p, o))
      t0 = time.perf_counter()
      _, _, m = steps.sft_step(graphdef, p, o, *b, frozen, tx=tx, microbatch=mb)
      losses.append(float(m["sft/loss"]))  # waits for the step
      total += time.perf_counter() - t0
    return total, losses

  sides = (("one per row", plain, mb), ("packed", packed, pmb))
  first = {name: timed(b, m)[0] for name, b, m in sides}
  best, losses = {"one per row": np.inf, "packed": np.inf}, {}
  for _ in range(max(FLAGS.repeats, 1)):
    for name, b, m in sides:
      t, losses[name] = timed(b, m)
      best[name] = min(best[name], t)
  print("\n| side | first pass (compiles) | best pass | s/step | ratio |\n|---|---:|---:|---:|---:|")
  for name in best:
    print(f"| {name} | {first[name]:.2f} s | {best[name]:.2f} s | {best[name] / FLAGS.steps:.3f} | "
          f"{best['one per row'] / best[name]:.2f}x |")
  want, got = losses["one per row"], losses["packed"]
  diff = max(abs(a - b) / abs(a) for a, b in zip(want, got))
  print(f"\nlosses per step (one per row / packed): {', '.join(f'{a:.4f}/{b:.4f}' for a, b in zip(want, got))}; "
        f"largest relative difference {diff:.1e}")
  if diff > 1e-4:
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
