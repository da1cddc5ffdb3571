"""KV-cached greedy decoding speed: agent_rl's jitted generate vs transformers' generate (PyTorch), same weights.

Both sides decode the same left-padded batch greedily with a KV cache and produce exactly max_new_tokens tokens
(ours: no EOS; transformers: min_new_tokens). Ours is timed warm (compilation excluded), theirs after a warm-up
run; each side reports the best of --repeats runs. The tokens of the two sides are compared as a correctness check.

Weights: random (`--preset`), or a local Hugging Face Qwen2 / Llama directory (`--hf_dir`) loaded by both sides
(ours: `agent_rl.hf.from_pretrained`, theirs: `AutoModelForCausalLM.from_pretrained`). The prompts are random token
ids either way.

  python bench/decode.py                                   # tiny Qwen2-shaped model, batch 8, prompt 64, 128 new
  python bench/decode.py --preset=qwen2_5_0_5b --batch=4 --new_tokens=64
  python bench/decode.py --hf_dir=models/smollm2-135m-instruct --batch=64
"""
import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

import common  # bench/common.py, beside this script
from agent_rl import hf
from agent_rl import model as model_lib
from agent_rl import sampling

flags.DEFINE_string("preset", "tiny", f"model shape: one of {sorted(model_lib.PRESETS)} (random weights)")
common.define_comparison_flags(hf_dir="Hugging Face model directory loaded by both sides (overrides --preset)",
                               vocab="vocabulary size (tiny preset only)", batch="rows decoded in lockstep")
flags.DEFINE_integer("prompt_len", 64, "padded prompt length")
flags.DEFINE_integer("max_pad", 16, "rows get 0..max_pad tokens of left padding")
flags.DEFINE_integer("new_tokens", 128, "tokens generated per row")
flags.DEFINE_bool("hf", True, "also run transformers for comparison")
common.define_decode_block_flag()
FLAGS = flags.FLAGS


def main(_):
  if FLAGS.hf_dir:
    model, cfg = hf.from_pretrained(FLAGS.hf_dir, FLAGS.dtype, FLAGS.dtype)
    name = os.path.basename(os.path.normpath(FLAGS.hf_dir))
  else:
    if FLAGS.preset == "tiny":
      cfg = model_lib.tiny(vocab_size=FLAGS.vocab, dtype=FLAGS.dtype, param_dtype=FLAGS.dtype)
    else:
      cfg = model_lib.preset(FLAGS.preset, dtype=FLAGS.dtype, param_dtype=FLAGS.dtype)
    model, name = model_lib.Transformer(cfg, rngs=nnx.Rngs(0)), FLAGS.preset
  model = common.with_decode_block(model, FLAGS.decode_block)
  cfg = model.cfg
  b, p, n = FLAGS.batch, FLAGS.prompt_len, FLAGS.new_tokens
  rng = np.random.RandomState(0)
  pad = rng.randint(0, FLAGS.max_pad + 1, b)
  valid = np.arange(p)[None] >= pad[:, None]
  tokens = np.where(valid, rng.randint(0, cfg.vocab_size, (b, p)), 0).astype(np.int32)
  print(f"model {name}: {cfg.n_params / 1e6:.1f}M params, d_model {cfg.d_model}, {cfg.n_layers} layers, "
        f"vocab {cfg.vocab_size}, {cfg.dtype}; batch {b}, prompt {p} (left padding 0..{FLAGS.max_pad}), "
        f"{n} new tokens; decode blocks of {cfg.decode_block} slots")

  key = jax.random.key(0)
  jt, jv = jnp.asarray(tokens), jnp.asarray(valid)

  def ours():
    out, _ = sampling.generate(model, jt, jv, key, n, eos_id=-1, temperature=0.0)
    return np.asarray(jax.block_until_ready(out))

  first, t_ours, (ours_tokens, *_) = common.first_and_best(ours, FLAGS.repeats)
  print(f"agent_rl  compile + first run {first:.2f}s on {jax.devices()[0].platform}")
  print(f"agent_rl  (jax, jitted lax loop, KV cache): {b * n / t_ours:10.1f} tokens/s  ({t_ours:.3f}s per batch)")
  if not FLAGS.hf:
    return

  import torch
  import transformers
  if FLAGS.hf_dir:
    ref = transformers.AutoModelForCausalLM.from_pretrained(FLAGS.hf_dir, dtype=getattr(torch, FLAGS.dtype),
                                                            local_files_only=True).eval()
  else:
    with tempfile.TemporaryDirectory() as d:
      hf.save_pretrained(model, cfg, d)
      ref = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=getattr(torch, FLAGS.dtype)).eval()
  tt, tv = torch.tensor(tokens, dtype=torch.long), torch.tensor(valid.astype(np.int64))

  def theirs():
    with torch.inference_mode():
      return ref.generate(input_ids=tt, attention_mask=tv, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                          use_cache=True, pad_token_id=0)[:, p:].numpy()

  _, t_hf, (hf_tokens, *_) = common.first_and_best(theirs, FLAGS.repeats)  # the first call warms torch up
  print(f"transformers {transformers.__version__} (torch {torch.__version__} CPU, {torch.get_num_threads()} threads, "
        f"{ref.config._attn_implementation} attention): {b * n / t_hf:10.1f} tokens/s  ({t_hf:.3f}s per batch)")
  print(f"speed-up agent_rl / transformers: {t_hf / t_ours:.2f}x")
  agree = float(np.mean(ours_tokens == hf_tokens))
  first = np.argmax(np.any(ours_tokens != hf_tokens, 0)) if agree < 1 else n
  print(f"greedy tokens identical: {agree:.1%} (first difference at step {first} of {n})")


if __name__ == "__main__":
  app.run(main)
