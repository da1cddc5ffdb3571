"""A smoke-test size of the default run (seconds of compute): every phase, checkpoint and log of configs/tiny.py
on a model and data too small to learn anything. Used by the end-to-end and resume tests."""
from configs import tiny


def get_config():
    c = tiny.get_config()
    c.workdir = "runs/micro"
    c.data.n_train, c.data.n_heldout, c.data.n_iid = 64, 22, 22
    c.shapes.update(prompt=512, seg=256, script=256)
    c.tokenizer.vocab_size = 512
    c.model.update(d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, head_dim=16, mlp_dim=64)
    c.env.update(max_turn_tokens=48, max_tokens=96)
    c.sft.update(steps=4, batch_size=8, microbatch=4, warmup=1, pack=True)  # packing on in the end-to-end tests
    c.grpo.update(steps=2, n_scenarios=2, group_size=4, minibatch_size=4, microbatch=2, warmup=1)
    c.eval.update(batch_size=22, every=0)
    c.checkpoint.update(every=2, keep=2)
    return c
