"""The rollout's prompt prefill on SmolLM2-135M-Instruct, every row's against each group's once.

`rollout.sample_episodes` on the preset's first 4 train scenarios x 8 (prompts 186-222 tokens) with an episode
budget of 4 tokens, so the prefill is most of the call: group_size 1 (every row prefilled) against 8 (each group's
prompt once, its KV cache copied to the rows), three times each, interleaved; the sampled tokens are compared.

  python experiments/prefill_share.py      # needs models/smollm2-135m-instruct (launch/import_model.py)
"""
import time

import jax
import numpy as np

from agent_rl import lora, rollout, setup
from configs import smollm2
from sandbox import compile as compile_lib

cfg = smollm2.get_config()
cfg.data.update(n_train=64, n_heldout=8, n_iid=0)
s = setup.make_setup(cfg)
batch = rollout.repeat_group(rollout.trim_prompts(compile_lib.take(s.train, np.arange(4))), 8)
graphdef, params, frozen = lora.split(setup.build_model(cfg, s.model_cfg))
full = lora.full_state(params, frozen)
env = s.env_params._replace(max_tokens=4)
out = {}
for rep in range(3):
    for g in (1, 8):
        t = time.perf_counter()
        tr = rollout.sample_episodes(graphdef, full, batch, s.vocab, jax.random.key(0), env, 1.0,
                                     max_new_tokens=4, group_size=g)
        jax.block_until_ready(tr.tokens)
        dt = time.perf_counter() - t
        out.setdefault(g, []).append(dt)
        out[("tok", g)] = np.asarray(tr.tokens)
        print(rep, g, f"{dt:.2f} s", flush=True)
print("prompt", batch.prompt.shape, "tokens equal:", (out[("tok", 1)] == out[("tok", 8)]).all())
print("best every row %.2f s, once per group %.2f s" % (min(out[1][1:]), min(out[8][1:])))
