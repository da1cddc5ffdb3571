"""SFT step speed: agent_rl's jitted `steps.sft_step` vs a transformers + PyTorch training step, same weights and batch.

One step is forward + backward + global-norm clipping (1.0) + AdamW update, on both sides with the same learning rate
and weight decay. The batch is random tokens int32[batch, seq] (no padding); the loss is the mean token
cross-entropy on every token (`--loss_on=all`) or on the second half of each row (`--loss_on=last_half`, like SFT on a
completion). `--microbatch` splits the batch into forward/backward passes whose gradients accumulate (ours:
`sft_step`'s (sum, denominator) scan; theirs: loss sum / the batch's token count, backward per microbatch, as
transformers' Trainer does with `num_items_in_batch`).

Weights: `--hf_dir` loads a local Hugging Face Qwen2 / Llama directory on both sides (ours: `agent_rl.hf`, theirs:
`AutoModelForCausalLM.from_pretrained`); empty, a random tiny Llama (tied embeddings) is made with transformers and
saved to a temporary directory both sides load. `--dtype` is the compute and parameter dtype of both sides (ours via
ModelConfig dtype / param_dtype, theirs via `model.to(dtype)`); the optimizer state follows the parameters.

`--lora_rank` > 0 trains low-rank adapters on every projection (q k v o gate up down) and freezes the base: ours
with `agent_rl.lora.add_lora` + `lora.split` (the frozen base goes to `sft_step` as `frozen`), theirs with a minimal
LoRA wrapper around each `nn.Linear` (y = W x + (alpha / rank) B A x) holding a copy of our initial adapters, so both
sides train the same function from the same start.

Ours is timed warm (the first call compiles, and is reported apart); theirs after one warm-up step. Each side reports
the best of `--repeats` steps. Correctness: the first step's loss (same weights, same batch) must agree within 1e-3
in float32 (the exit status is 1 otherwise); the loss of the second step, after one update on each side, is printed
as well.

  python bench/sft_step.py                                         # random tiny Llama, batch 8, seq 256
  python bench/sft_step.py --batch=2 --seq=32 --lora_rank=4 --dtype=bfloat16
  python bench/sft_step.py --hf_dir=models/smollm2-135m-instruct --batch=8 --seq=256 --microbatch=4
"""
import os
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from flax import nnx

import common  # bench/common.py, beside this script
from agent_rl import hf, lora, steps
from agent_rl.model import LORA_TARGETS

common.define_comparison_flags(
    hf_dir="Hugging Face model directory loaded by both sides (empty: a random tiny Llama)",
    vocab="vocabulary size of the random tiny Llama (no --hf_dir only)", batch="rows per step")
flags.DEFINE_integer("seq", 256, "tokens per row")
flags.DEFINE_integer("microbatch", 0, "rows per forward/backward pass, gradients accumulated (0: the whole batch)")
flags.DEFINE_enum("loss_on", "all", ["all", "last_half"], "tokens the loss is on")
flags.DEFINE_integer("lora_rank", 0, "0: full fine-tuning; > 0: train LoRA adapters of this rank, base frozen")
flags.DEFINE_float("lora_alpha", 32.0, "LoRA scale numerator (the adapter adds alpha / rank * B A x)")
flags.DEFINE_float("lr", 5e-4, "AdamW learning rate (constant, both sides)")
flags.DEFINE_float("weight_decay", 0.0, "AdamW decoupled weight decay (both sides)")
flags.DEFINE_integer("threads", os.cpu_count(), "torch.set_num_threads")
flags.DEFINE_integer("seed", 0, "random model, adapters and batch")
FLAGS = flags.FLAGS

F32_TOL = 1e-3
MAX_GRAD_NORM = 1.0
HF_PROJ = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
           "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}


def lora_linear_class():
  import torch

  class LoRALinear(torch.nn.Module):
    """y = base(x) + scale * (x A) B, base frozen; A [in, rank], B [rank, out] (our adapters' layout)."""

    def __init__(self, base: torch.nn.Linear, a: np.ndarray, b: np.ndarray, scale: float):
      super().__init__()
      self.base, self.scale = base, scale
      self.lora_a = torch.nn.Parameter(torch.tensor(a, dtype=base.weight.dtype))
      self.lora_b = torch.nn.Parameter(torch.tensor(b, dtype=base.weight.dtype))

    def forward(self, x):
      return self.base(x) + self.scale * ((x @ self.lora_a) @ self.lora_b)

  return LoRALinear


def add_torch_lora(ref, adapters: nnx.State, rank: int, alpha: float) -> None:
  """Freeze ref and wrap every targeted projection with a LoRA holding a copy of our adapters (float32 copies)."""
  LoRALinear = lora_linear_class()
  for p in ref.parameters():
    p.requires_grad_(False)
  flat = {path: np.asarray(var.get_value().astype(jnp.float32)) for path, var in nnx.to_flat_state(adapters)}
  for i, layer in enumerate(ref.model.layers):
    for name in LORA_TARGETS:
      (a,) = [v for path, v in flat.items() if path[-1] == f"{name}_lora_a"]
      (b,) = [v for path, v in flat.items() if path[-1] == f"{name}_lora_b"]
      parent_name, attr = HF_PROJ[name].split(".")
      parent = getattr(layer, parent_name)
      setattr(parent, attr, LoRALinear(getattr(parent, attr), a[i].reshape(-1, rank), b[i].reshape(rank, -1),
                                       alpha / rank))


def main(_):
  import torch
  import transformers
  torch.set_num_threads(FLAGS.threads)
  transformers.utils.logging.disable_progress_bar()
  b, s = FLAGS.batch, FLAGS.seq
  microbatch = FLAGS.microbatch or b
  if b % microbatch:
    raise ValueError(f"--batch={b} must be a multiple of --microbatch={microbatch}")

  with tempfile.TemporaryDirectory() as tmp:
    hf_dir = FLAGS.hf_dir or tmp
    if not FLAGS.hf_dir:
      common.random_llama(tmp, FLAGS.vocab, FLAGS.seed)
    model, cfg = hf.from_pretrained(hf_dir, FLAGS.dtype, FLAGS.dtype)
    ref = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32, local_files_only=True)
  if FLAGS.lora_rank:
    model = lora.add_lora(model, FLAGS.seed, lora_rank=FLAGS.lora_rank, lora_alpha=FLAGS.lora_alpha)
    add_torch_lora(ref, nnx.state(model, nnx.LoRAParam), FLAGS.lora_rank, FLAGS.lora_alpha)
  ref = ref.to(getattr(torch, FLAGS.dtype)).train()
  graphdef, params, frozen = lora.split(model)
  del model

  rng = np.random.RandomState(FLAGS.seed)
  tokens = rng.randint(0, cfg.vocab_size, (b, s)).astype(np.int32)
  valid = np.ones((b, s), bool)
  mask = valid if FLAGS.loss_on == "all" else np.arange(s)[None].repeat(b, 0) >= s // 2
  n_ours = sum(x.size for x in jax.tree.leaves(params))
  trainable = [p for p in ref.parameters() if p.requires_grad]
  n_theirs = sum(p.numel() for p in trainable)
  name = os.path.basename(os.path.normpath(FLAGS.hf_dir)) if FLAGS.hf_dir else "random tiny llama"
  what = f"LoRA rank {FLAGS.lora_rank} (alpha {FLAGS.lora_alpha:g})" if FLAGS.lora_rank else "full fine-tuning"
  print(f"model {name}: {cfg.n_params / 1e6:.1f}M params, d_model {cfg.d_model}, {cfg.n_layers} layers, vocab "
        f"{cfg.vocab_size}, {cfg.dtype}; {what}, trainable {n_ours / 1e6:.3f}M (ours) / {n_theirs / 1e6:.3f}M "
        f"(theirs); batch {b} x seq {s}, microbatch {microbatch}, loss on {FLAGS.loss_on} tokens "
        f"({int(mask[:, 1:].sum())}); AdamW lr {FLAGS.lr:g}, weight decay {FLAGS.weight_decay:g}, clip "
        f"{MAX_GRAD_NORM:g}", flush=True)

  # Ours.
  tx = optax.chain(optax.clip_by_global_norm(MAX_GRAD_NORM), optax.adamw(FLAGS.lr, weight_decay=FLAGS.weight_decay))
  opt_state = tx.init(params)
  jt, jv, jm = jnp.asarray(tokens), jnp.asarray(valid), jnp.asarray(mask)

  def ours():
    nonlocal params, opt_state
    params, opt_state, m = steps.sft_step(graphdef, params, opt_state, jt, jv, jm, frozen, tx=tx,
                                          microbatch=microbatch)
    jax.block_until_ready((params, opt_state, m))
    return float(m["sft/loss"])

  first, t_ours, ours_loss = common.first_and_best(ours, FLAGS.repeats)
  print(f"agent_rl  compile + first step {first:.2f}s on {jax.devices()[0].platform}", flush=True)
  del params, opt_state

  # Theirs.
  opt = torch.optim.AdamW(trainable, lr=FLAGS.lr, weight_decay=FLAGS.weight_decay)
  tt = torch.tensor(tokens, dtype=torch.long)
  labels = torch.where(torch.tensor(mask), tt, torch.full_like(tt, -100))
  n_items = torch.tensor(int(mask[:, 1:].sum()))  # the loss's denominator: targets tokens[:, 1:] on mask[:, 1:]

  def theirs():
    opt.zero_grad(set_to_none=True)
    loss = 0.0
    for i in range(0, b, microbatch):
      out = ref(input_ids=tt[i:i + microbatch], labels=labels[i:i + microbatch], num_items_in_batch=n_items)
      out.loss.backward()
      loss += out.loss.item()
    torch.nn.utils.clip_grad_norm_(trainable, MAX_GRAD_NORM)
    opt.step()
    return loss

  first, t_hf, hf_loss = common.first_and_best(theirs, FLAGS.repeats)
  print(f"transformers first step {first:.2f}s", flush=True)

  ours_side = f"agent_rl (jax {jax.__version__} {jax.devices()[0].platform}, jit)"
  hf_side = (f"transformers {transformers.__version__} (torch {torch.__version__}, {torch.get_num_threads()} threads, "
             f"{ref.config._attn_implementation} attention)")
  print(f"\n| side | s/step | tokens/s | ratio ours/theirs |\n|---|---:|---:|---:|\n"
        f"| {ours_side} | {t_ours:.4f} | {b * s / t_ours:,.0f} | {t_hf / t_ours:.2f}x |\n"
        f"| {hf_side} | {t_hf:.4f} | {b * s / t_hf:,.0f} | 1.00x |\n")
  diff = abs(ours_loss[0] - hf_loss[0])
  print(f"first-step loss: agent_rl {ours_loss[0]:.6f}  transformers {hf_loss[0]:.6f}  |diff| {diff:.2e}")
  print(f"loss after one update: agent_rl {ours_loss[1]:.6f}  transformers {hf_loss[1]:.6f}  "
        f"|diff| {abs(ours_loss[1] - hf_loss[1]):.2e}")
  if FLAGS.dtype == "float32":
    print(f"first-step losses agree within {F32_TOL:g}: {'yes' if diff <= F32_TOL else 'NO'}")
    if diff > F32_TOL:
      sys.exit(1)
  else:
    print(f"({FLAGS.dtype}: the losses differ by rounding; the {F32_TOL:g} check applies to float32)")


if __name__ == "__main__":
  app.run(main)
