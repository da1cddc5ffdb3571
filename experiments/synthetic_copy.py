"""Can the model of a config learn to copy within a budget? Train it from scratch on synthetic copy rows.

  python experiments/synthetic_copy.py --steps 600                     # configs/tiny.py's model, both tasks
  python experiments/synthetic_copy.py --config configs/tiny.py --gap random --steps 1500 --pool 50 --out copy.json

Each task trains a fresh model (the config's model and seed, its SFT optimizer and learning rate unless --lr is
given) with `agent_rl.steps.sft_step` on rows from `copy_rows` in `experiments/copying.py`: `none` (a random sequence
repeated right after itself: a fixed distance back) and `random` (repeated after random filler: only an
induction head copies it). It prints the loss on the repeated tokens every --every steps, next to ln(pool), a
uniform guess; a model that copies drives the loss towards 0.
"""
import json
import math
import os
import time

from absl import flags, logging

from agent_rl import cli

FLAGS = flags.FLAGS
_CONFIG = cli.define_config_file(
    "config", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "tiny.py"),
    "the run config whose model (config.model, config.tokenizer.vocab_size) is trained")
flags.DEFINE_list("gap", ["none", "random"], "tasks: none (copy right after), random (copy after filler)")
flags.DEFINE_integer("steps", 600, "optimizer steps per task")
flags.DEFINE_integer("batch", 32, "rows per step")
flags.DEFINE_integer("width", 96, "tokens per row")
flags.DEFINE_integer("pool", 50, "tokens are drawn from ids [0, pool)")
flags.DEFINE_float("lr", 0.0, "peak learning rate (0: config.sft.lr); warmup and cosine decay as in SFT")
flags.DEFINE_integer("every", 50, "report the mean loss of every this many steps")
flags.DEFINE_string("out", None, "also write the curves as JSON here")


def curve(cfg, gap: str, steps: int, batch: int, width: int, pool: int, lr: float, every: int) -> list[dict]:
    """[{"step", "loss", "seconds"}] for one task: the mean loss of each block of `every` steps."""
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    import copying  # experiments/copying.py, beside this script
    from agent_rl import setup
    from agent_rl import steps as steps_lib

    vocab = int(cfg.tokenizer.vocab_size)
    if not 0 < pool <= vocab:
        raise ValueError(f"--pool={pool} must be in [1, config.tokenizer.vocab_size={vocab}]")
    model = setup.build_model(cfg, setup.build_model_config(cfg, vocab))
    graphdef, params = nnx.split(model, nnx.Param)
    tx = steps_lib.make_optimizer(steps_lib.lr_schedule(lr, int(cfg.sft.warmup), steps), 0.0)
    opt_state = tx.init(params)
    rng = np.random.default_rng(int(cfg.seed))
    out, block, t0 = [], [], time.time()
    for step in range(1, steps + 1):
        rows = map(jnp.asarray, copying.copy_rows(rng, batch, width, pool, gap))
        params, opt_state, m = steps_lib.sft_step(graphdef, params, opt_state, *rows, tx=tx, microbatch=batch)
        block.append(float(m["sft/loss"]))
        if step % every == 0 or step == steps:
            out.append({"step": step, "loss": float(np.mean(block)), "seconds": round(time.time() - t0, 1)})
            print(f"{gap:>6} step {step:5d}  loss {out[-1]['loss']:.3f}  ({out[-1]['seconds']:.0f} s)", flush=True)
            block = []
    return out


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    cfg = _CONFIG.value
    if cfg.model.hf_dir:
        cli.fail("config.model.hf_dir is set: this trains the built-in model from scratch")
    problem = cli.unwritable(FLAGS.out)
    if problem:
        cli.fail(f"--out={FLAGS.out}: {problem}")
    lr = FLAGS.lr or float(cfg.sft.lr)
    print(f"uniform guess ln({FLAGS.pool}) = {math.log(FLAGS.pool):.3f}; lr {lr:g}, batch {FLAGS.batch} x "
          f"{FLAGS.width} tokens")
    try:
        curves = {g: curve(cfg, g, FLAGS.steps, FLAGS.batch, FLAGS.width, FLAGS.pool, lr, FLAGS.every)
                  for g in FLAGS.gap}
    except ValueError as e:
        cli.fail(str(e))
    if FLAGS.out:
        with open(FLAGS.out, "w") as f:
            json.dump({"pool": FLAGS.pool, "lr": lr, "batch": FLAGS.batch, "width": FLAGS.width, "curves": curves},
                      f, indent=1)


if __name__ == "__main__":
    cli.run(main)
