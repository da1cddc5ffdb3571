"""What the bench/ scripts share: timing one side (its first call apart, then the best of the repeats), and the
flags of the benchmarks that run the same weights through agent_rl and transformers (decode.py, sft_step.py), and
the cached-attention block of the decoding benchmarks (decode.py, rollout.py), and a random tiny Llama (sft_step.py,
train_layers.py).

The scripts import it as `common` (it sits beside them: `python bench/X.py` puts bench/ on the path).
"""
from __future__ import annotations

import time
from typing import Any, Callable

from absl import flags

from agent_rl import lora

DTYPES = ["float32", "bfloat16"]


def first_and_best(fn: Callable[[], Any], repeats: int) -> tuple[float, float, list]:
    """Call `fn` once (compilation or warm-up, timed apart), then `repeats` more times (at least once).

    Returns (seconds of the first call, seconds of the fastest later call, every call's result in order)."""
    times, results = [], []
    for _ in range(1 + max(repeats, 1)):
        start = time.perf_counter()
        results.append(fn())
        times.append(time.perf_counter() - start)
    return times[0], min(times[1:]), results


def define_comparison_flags(*, hf_dir: str, vocab: str, batch: str) -> None:
    """--hf_dir, --vocab, --batch (with these help texts), --dtype and --repeats: the weights, batch, dtype and
    timing of a benchmark whose two sides (agent_rl, transformers) load the same weights."""
    flags.DEFINE_string("hf_dir", "", hf_dir)
    flags.DEFINE_integer("vocab", 4096, vocab)
    flags.DEFINE_integer("batch", 8, batch)
    flags.DEFINE_enum("dtype", "float32", DTYPES, "compute and parameter dtype on both sides")
    flags.DEFINE_integer("repeats", 3, "timed runs per side after the first (the best is reported)")


def define_decode_block_flag() -> None:
    """--decode_block: cache slots per step of cached attention's loop (0: the model's own)."""
    flags.DEFINE_integer("decode_block", 0, "cache slots per step of cached attention's loop (0: the model's own, "
                         "ModelConfig.decode_block)")


def with_decode_block(model, block: int):
    """`model` with its weights, decoding with cache blocks of `block` slots (0: `model` itself)."""
    return lora.with_config(model, model.cfg.replace(decode_block=block)) if block else model


def random_llama(out_dir: str, vocab: int, seed: int) -> None:
    """A random tiny Llama (tied embeddings, grouped-query attention) written by transformers to out_dir."""
    import torch
    import transformers
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=vocab, hidden_size=128, intermediate_size=384, num_hidden_layers=4,
                                      num_attention_heads=4, num_key_value_heads=2, head_dim=32, rms_norm_eps=1e-5,
                                      tie_word_embeddings=True, max_position_embeddings=4096)
    transformers.LlamaForCausalLM(config).save_pretrained(out_dir)
