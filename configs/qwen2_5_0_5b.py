"""Qwen2.5-0.5B-Instruct made a safe tool-using agent: SFT warm start, then GRPO, on 16 accelerators.

    python launch/train.py --config configs/qwen2_5_0_5b.py --config.model.hf_dir=DIR   # a v5p-32 slice
    python launch/train.py --config configs/qwen2_5_0_5b.py:lora,h100_2x8                # LoRA on 2 x 8 H100
    python launch/memory_plan.py --config configs/qwen2_5_0_5b.py --devices 16           # memory per device

Sizes, variants and the reasoning behind them: configs/qwen2_5.py and configs/meshes.py.
"""
from configs import qwen2_5


def get_config(variant: str = ""):
    return qwen2_5.get_config("0_5b", variant)
