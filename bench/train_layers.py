"""SFT step speed when only the top blocks train (`ModelConfig.train_layers`, config `sft.train_layers` and
`grpo.train_layers`) against training every parameter, same weights and batch, in one process.

Each setting is one jitted `steps.sft_step` (forward, backward, clipping, AdamW with the frozen parameters
masked) on random tokens int32[batch, seq], the loss on every token. The settings are compiled first, then timed
in turns, `--repeats` rounds, best of each. The backward pass stops at the lowest trained block, so a step's cost
falls towards one forward pass as fewer blocks train; the GRPO update's gradient pass is the same computation.
Correctness: every setting's first loss (the same weights) must equal the full step's within 1e-5 (exit 1
otherwise).

  python bench/train_layers.py                                      # random tiny Llama, every layer vs the top 1, 2
  python bench/train_layers.py --hf_dir=models/smollm2-135m-instruct --batch=4 --seq=256 --train_layers=10,5
"""
import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

import common  # bench/common.py, beside this script
from agent_rl import hf, lora, steps

flags.DEFINE_string("hf_dir", "", "Hugging Face model directory (empty: a random tiny Llama)")
flags.DEFINE_integer("vocab", 4096, "vocabulary size of the random tiny Llama (no --hf_dir only)")
flags.DEFINE_integer("batch", 8, "rows per step")
flags.DEFINE_integer("seq", 256, "tokens per row")
flags.DEFINE_integer("microbatch", 0, "rows per forward/backward pass (0: the whole batch)")
flags.DEFINE_list("train_layers", ["1", "2"], "top blocks trained, one setting each (timed against every layer)")
flags.DEFINE_integer("repeats", 3, "timed rounds after the compiling call (the best of each setting is reported)")
flags.DEFINE_integer("seed", 0, "random model and batch")
FLAGS = flags.FLAGS

TOL = 1e-5


def main(_):
  with tempfile.TemporaryDirectory() as tmp:
    hf_dir = FLAGS.hf_dir or tmp
    if not FLAGS.hf_dir:
      common.random_llama(tmp, FLAGS.vocab, FLAGS.seed)
    model, cfg = hf.from_pretrained(hf_dir, "float32", "float32")
  graphdef, params, frozen = lora.split(model)
  del model
  b, s = FLAGS.batch, FLAGS.seq
  microbatch = FLAGS.microbatch or b
  settings = [0] + [int(n) for n in FLAGS.train_layers]
  rng = np.random.RandomState(FLAGS.seed)
  tokens = jnp.asarray(rng.randint(0, cfg.vocab_size, (b, s)), jnp.int32)
  valid = jnp.ones((b, s), bool)
  name = os.path.basename(os.path.normpath(FLAGS.hf_dir)) if FLAGS.hf_dir else "random tiny llama"
  print(f"model {name}: {cfg.n_params / 1e6:.1f}M params, {cfg.n_layers} layers; batch {b} x seq {s}, microbatch "
        f"{microbatch}; float32 on {jax.devices()[0].platform}", flush=True)

  runs = {}
  for n in settings:
    gd = lora.with_train_layers(graphdef, cfg, n)
    tx = steps.make_optimizer(1e-4, 0.0, mask=lora.update_mask(params, cfg.n_layers, n))
    state = [jax.tree.map(jnp.copy, params), tx.init(params)]

    def step(gd=gd, tx=tx, state=state):
      state[0], state[1], m = steps.sft_step(gd, state[0], state[1], tokens, valid, valid, frozen, tx=tx,
                                             microbatch=microbatch)
      return float(m["sft/loss"])  # waits for the step

    t0 = time.perf_counter()
    runs[n] = {"step": step, "loss": step(), "first": time.perf_counter() - t0, "best": float("inf")}
  for _ in range(max(FLAGS.repeats, 1)):
    for r in runs.values():
      t0 = time.perf_counter()
      r["step"]()
      r["best"] = min(r["best"], time.perf_counter() - t0)

  full = runs[0]
  print("\n| trained blocks | first call (compile) s | s/step | tokens/s | speed-up vs every layer | first loss |\n"
        "|---|---:|---:|---:|---:|---:|")
  for n, r in runs.items():
    print(f"| {n or f'all {cfg.n_layers}'} | {r['first']:.2f} | {r['best']:.4f} | {b * s / r['best']:,.0f} | "
          f"{full['best'] / r['best']:.2f}x | {r['loss']:.6f} |")
  worst = max(abs(r["loss"] - full["loss"]) for r in runs.values())
  print(f"\nfirst losses agree with the full step's within {TOL:g}: {'yes' if worst <= TOL else 'NO'} "
        f"(max |diff| {worst:.2e})")
  if worst > TOL:
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
