"""The paper's alignment variants beside the default run (configs/tiny.py: user+tool channels, shaped reward): the
same run with only the reward's threat channels and kind changed, each in its own workdir (runs/<variant>).

    python launch/train.py --config configs/ablation.py:user_only_paper    # user+only alignment, the paper's reward
    python launch/train.py --config configs/ablation.py:user_only_shaped   # user+only alignment, the shaped reward
    python launch/train.py --config configs/ablation.py:user_tool_paper    # user+tool alignment, the paper's reward
"""
from configs import tiny

# variant: (reward.channels, reward.kind)
VARIANTS = {"user_only_paper": ("user_only", "paper"), "user_only_shaped": ("user_only", "shaped"),
            "user_tool_paper": ("user_tool", "paper")}


def get_config(variant: str = ""):
    if variant not in VARIANTS:
        raise ValueError(f"configs/ablation.py: unknown variant {variant!r}; expected one of {list(VARIANTS)} "
                         f"(--config configs/ablation.py:{next(iter(VARIANTS))})")
    c = tiny.get_config()
    c.workdir = f"runs/{variant}"
    c.reward.channels, c.reward.kind = VARIANTS[variant]
    return c
