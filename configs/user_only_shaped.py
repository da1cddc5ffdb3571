"""The paper's variant: user+only alignment with the shaped reward (the default run, configs/tiny.py, is user+tool with
the shaped reward). `python launch/train.py --config configs/user_only_shaped.py`."""
from configs import tiny


def get_config():
    c = tiny.get_config()
    c.workdir = "runs/user_only_shaped"
    c.reward.channels = "user_only"
    c.reward.kind = "shaped"
    return c
