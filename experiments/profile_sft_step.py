"""Where an SFT step's time goes on SmolLM2's shapes: forward and forward+backward, piece by piece, warm.

Each line times one jitted function of a [batch, seq] random-token microbatch (best of --repeats) on the imported
weights, so the pieces can be compared with each other and with `bench/sft_step.py`'s whole step. The "body"
pieces rebuild the model's layer loop without the LM head (scanned, or unrolled by indexing the stacked weights;
attention replaced by q in "body no-attention"). With --trace=DIR each timed piece is run once more under
`jax.profiler` and the costliest XLA ops (summed over the CPU's worker threads) are printed; --hlo=FILE writes
the optimised HLO of the traced piece, to map op names to what they compute. Findings: docs/experiments.md,
"Where a SmolLM2 SFT step's time went".

  python experiments/profile_sft_step.py --hf_dir=models/smollm2-135m-instruct --batch=4 --seq=256
  python experiments/profile_sft_step.py --only="sft loss + grad" --trace=/tmp/trace --hlo=/tmp/step.hlo
"""
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

from agent_rl import grpo, hf, lora, steps
from agent_rl import model as model_lib

flags.DEFINE_string("hf_dir", "models/smollm2-135m-instruct", "Hugging Face model directory")
flags.DEFINE_integer("batch", 4, "rows (one microbatch)")
flags.DEFINE_integer("seq", 256, "tokens per row")
flags.DEFINE_integer("lora_rank", 16, "0: full fine-tuning")
flags.DEFINE_integer("repeats", 3, "warm runs (best is reported)")
flags.DEFINE_string("trace", "", "write a jax.profiler trace of the timed pieces here and print the costliest ops")
flags.DEFINE_string("hlo", "", "with --trace: write the optimized HLO of the traced piece here")
flags.DEFINE_list("only", [], "names of the pieces to time (empty: all)")
FLAGS = flags.FLAGS


def best_of(fn, *args):
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(FLAGS.repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return min(times)


def top_ops(fn, args, n=25):
  """Run fn once under the profiler; print the n ops (XLA thunks) with the most total time."""
  import collections
  import glob
  import os
  jax.profiler.start_trace(FLAGS.trace)
  jax.block_until_ready(fn(*args))
  jax.profiler.stop_trace()
  path = max(glob.glob(os.path.join(FLAGS.trace, "**", "*.xplane.pb"), recursive=True), key=os.path.getmtime)
  data = jax.profiler.ProfileData.from_file(path)
  total, count = collections.Counter(), collections.Counter()
  for plane in data.planes:
    for line in plane.lines:
      for ev in line.events:
        if line.name.startswith("tf_XLAEigen") and not ev.name.startswith("ThunkExecutor"):
          total[ev.name] += ev.duration_ns
          count[ev.name] += 1
  print(f"  {sum(total.values()) / 1e6:9.1f} ms in ops (summed over threads)")
  for name, ns in total.most_common(n):
    print(f"  {ns / 1e6:9.1f} ms  x{count[name]:<5d} {name[:90]}")
  if FLAGS.hlo:
    with open(FLAGS.hlo, "w") as f:
      f.write(fn.lower(*args).compile().as_text())


def main(_):
  model, cfg = hf.from_pretrained(FLAGS.hf_dir, "float32", "float32")
  if FLAGS.lora_rank:
    model = lora.add_lora(model, 0, lora_rank=FLAGS.lora_rank, lora_alpha=32.0)
  graphdef, params, frozen = lora.split(model)
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(0, cfg.vocab_size, (FLAGS.batch, FLAGS.seq)), jnp.int32)
  valid = jnp.ones_like(tokens, bool)
  mask = valid
  b, t, d = FLAGS.batch, FLAGS.seq, cfg.d_model

  def hidden(m, tokens, valid, unroll=False, attend=True):
    """The final-normed residual stream [B, T, d], without the LM head."""
    x = jnp.take(m.embed[...], tokens, axis=0)
    mask = jnp.tril(jnp.ones((t, t), bool))[None] & valid[:, None, :]
    pos = model_lib.positions_from_valid(valid)
    gd, bs = nnx.split(m.blocks)

    def layer(x, s):
      blk = nnx.merge(gd, s)
      h = model_lib.rms_norm(x, blk.attn_norm[...], cfg.rms_eps)
      q, k, v = blk.attn.qkv(h, pos)
      x = x + blk.attn.out(model_lib.attention(q, k, v, mask) if attend else q)
      return x + blk.mlp(model_lib.rms_norm(x, blk.mlp_norm[...], cfg.rms_eps)), None

    if unroll:
      for i in range(cfg.n_layers):
        x, _ = layer(x, jax.tree.map(lambda a: a[i], bs))
    else:
      x, _ = jax.lax.scan(layer, x, bs)
    return model_lib.rms_norm(x, m.final_norm[...], cfg.rms_eps)

  def sft_loss(p):
    m = nnx.merge(graphdef, p, frozen)
    logits = model_lib.forward(m, tokens, valid)
    s, n = grpo.sft_loss(logits, steps.next_tokens(tokens), steps.next_tokens(mask))
    return s / n

  def body_loss(p):
    return jnp.mean(hidden(nnx.merge(graphdef, p, frozen), tokens, valid) ** 2)

  def body_loss_unrolled(p):
    return jnp.mean(hidden(nnx.merge(graphdef, p, frozen), tokens, valid, unroll=True) ** 2)

  def body_loss_no_attention(p):
    return jnp.mean(hidden(nnx.merge(graphdef, p, frozen), tokens, valid, attend=False) ** 2)

  x_h = jax.random.normal(jax.random.key(1), (b, t, d), jnp.float32)
  head = jnp.asarray(nnx.state(model)["embed"][...])

  def head_loss(x, head):
    logits = jnp.einsum("btd,dv->btv", x, head.T, preferred_element_type=jnp.float32)
    s, n = grpo.sft_loss(logits, steps.next_tokens(tokens), steps.next_tokens(mask))
    return s / n

  pieces = {
      "forward (logits)": (jax.jit(lambda p: model_lib.forward(nnx.merge(graphdef, p, frozen), tokens, valid)), params),
      "sft loss": (jax.jit(sft_loss), params),
      "sft loss + grad": (jax.jit(jax.value_and_grad(sft_loss)), params),
      "body (no head) fwd": (jax.jit(body_loss), params),
      "body (no head) + grad": (jax.jit(jax.value_and_grad(body_loss)), params),
      "body unrolled + grad": (jax.jit(jax.value_and_grad(body_loss_unrolled)), params),
      "body no-attention + grad": (jax.jit(jax.value_and_grad(body_loss_no_attention)), params),
      "head + loss fwd": (jax.jit(head_loss), x_h, head),
      "head + loss + grad x": (jax.jit(jax.value_and_grad(head_loss)), x_h, head),
      "head + loss + grad x, head": (jax.jit(jax.value_and_grad(head_loss, argnums=(0, 1))), x_h, head),
  }
  print(f"batch {b} x seq {t}, lora_rank {FLAGS.lora_rank}, {jax.devices()[0].device_kind}")
  for name, (fn, *args) in pieces.items():
    if FLAGS.only and name not in FLAGS.only:
      continue
    s = best_of(fn, *args)
    if FLAGS.trace:
      top_ops(fn, args)
    print(f"{name:32s} {s * 1e3:9.1f} ms   {b * t / s:8.0f} tok/s", flush=True)


if __name__ == "__main__":
  app.run(main)
