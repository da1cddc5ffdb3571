"""What the Qwen2.5 presets share (configs/qwen2_5_0_5b.py, qwen2_5_1_5b.py, qwen2_5_7b.py): a run sized for 16
accelerators (a TPU v5p-32 slice or two 8 x H100 nodes).

Weights come from a Hugging Face directory of Qwen2.5-<size>-Instruct (`model.hf_dir`; e.g. `huggingface-cli download
Qwen/Qwen2.5-7B-Instruct --local-dir models/Qwen2.5-7B-Instruct`), the tokenizer from the same directory. The model's
shapes are agent_rl/model.py's presets, so `launch/memory_plan.py` needs neither.

Variants, joined by commas (`configs/qwen2_5_7b.py:lora,h100_2x8`):
  lora       adapters (rank 32 on every projection) on a frozen base instead of full fine-tuning
  v5p_32     the mesh for a TPU v5p-32 slice (the default)
  h100_2x8   the mesh for two nodes of 8 H100s
Mesh shapes and why: configs/meshes.py. Per-device memory of each: launch/memory_plan.py (README, "Scale").
"""
from __future__ import annotations

from configs import meshes
from configs import tiny

# Per size: preset, default weights directory, GRPO/SFT microbatch (rows per forward/backward pass, split over the
# mesh's data x fsdp devices), remat, and learning rates (full fine-tuning, LoRA).
SIZES = {
    "0_5b": dict(preset="qwen2_5_0_5b", hf_dir="models/Qwen2.5-0.5B-Instruct", microbatch=64, remat=False,
                 lr=(2e-6, 2e-5), sft_lr=(1e-5, 1e-4)),
    "1_5b": dict(preset="qwen2_5_1_5b", hf_dir="models/Qwen2.5-1.5B-Instruct", microbatch=64, remat=True,
                 lr=(1e-6, 1e-5), sft_lr=(1e-5, 1e-4)),
    "7b": dict(preset="qwen2_5_7b", hf_dir="models/Qwen2.5-7B-Instruct", microbatch=64, remat=True,
               lr=(1e-6, 1e-5), sft_lr=(5e-6, 5e-5)),
}
VARIANTS = ("lora", *meshes.MESHES)


def get_config(size: str, variant: str = ""):
    if size not in SIZES:
        raise ValueError(f"configs/qwen2_5.py: unknown size {size!r}; expected one of {list(SIZES)}")
    options = [v for v in variant.split(",") if v]
    unknown = [v for v in options if v not in VARIANTS]
    targets = [v for v in options if v in meshes.MESHES]
    if unknown or len(targets) > 1:
        raise ValueError(f"configs/qwen2_5_{size}.py: variant {variant!r}: expected 'lora' and at most one mesh "
                         f"of {list(meshes.MESHES)}, joined by commas")
    s, use_lora = SIZES[size], "lora" in options
    c = tiny.get_config()
    c.workdir = f"runs/qwen2_5_{size}" + "".join(f"_{v}" for v in options)
    # Data: the default run's scenarios; 384 heldout and iid so an evaluation batch splits over 16 or 64 devices.
    c.data.update(n_train=4096, n_heldout=384, n_iid=384)
    # Qwen's tokenizer gives prompts of <= 205 tokens, env segments <= 89, scripted turns <= 72 on these splits.
    c.shapes.update(prompt=256, seg=128, script=128)
    c.tokenizer.update(kind="hf", path="")  # the model directory's tokenizer
    # Replaces tiny's model dict: the preset's shapes are the model's; no shape overrides.
    c.model = dict(preset=s["preset"], hf_dir=s["hf_dir"], gguf="", dtype="bfloat16", param_dtype="float32",
                   remat=s["remat"], lora_rank=32 if use_lora else 0, lora_alpha=64.0,
                   lora_targets=("q", "k", "v", "o", "gate", "up", "down"), lora_dropout=0.0)
    c.mesh.shape = meshes.shape(targets[0] if targets else "v5p_32", size)
    # Turns of up to 128 tokens (room to think), 768 episode tokens: a trajectory is at most 256 + 768 = 1024 tokens.
    c.env.update(max_turns=6, max_turn_tokens=128, max_tokens=768)
    lr, sft_lr = s["lr"][use_lora], s["sft_lr"][use_lora]
    # SFT warm start: 64 demonstrations a step (4 per device on 16), 200 steps (~3 passes over 4096).
    c.sft.update(steps=200, batch_size=64, microbatch=s["microbatch"], lr=sft_lr, warmup=20)
    # GRPO: 64 scenarios x 8 samples = 512 episodes a step (32 rows per device on 16: decoding is bound by reading the
    # weights, so more rows per step are nearly free until the KV cache fills memory); two optimizer steps of 256.
    # KL to the SFT base at beta 0.04 (DeepSeekMath's), clip 0.2 / 0.28 (DAPO's clip-higher).
    c.grpo.update(steps=200, n_scenarios=64, group_size=8, temperature=1.0, lr=lr, warmup=10, mu=1,
                  minibatch_size=256, microbatch=s["microbatch"], beta=0.04, eps_low=0.2, eps_high=0.28)
    c.eval.update(batch_size=384, temperature=0.0, every=50)
    c.checkpoint.update(every=25, keep=2)
    return c
