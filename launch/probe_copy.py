"""Does a trained policy copy argument values? Its per-token loss on scripted demonstrations, by kind of token.

  python launch/probe_copy.py --checkpoint runs/tiny            # the latest step: the aligned policy
  python launch/probe_copy.py --checkpoint runs/tiny@400 --split iid --n 64 --out copy.json   # the SFT base

Renders `--n` episodes of the scripted `--scripted` policy on a split of the run's own scenarios, scores every
policy token under the checkpoint, and prints the count, mean and median loss (nats) of each class of
`agent_rl.evals.copying`: digits that start or continue a number, and other tokens, inside tool calls or not.
A continuing digit at ~ln 10 = 2.30 nats is a guess: the policy does not copy the value from the request.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "training workdir (or its checkpoints/), optionally @STEP", required=True)
flags.DEFINE_enum("split", "iid", ["train", "iid", "heldout"], "scenarios to render demonstrations on")
flags.DEFINE_integer("n", 64, "demonstrations (the split's first n scenarios)")
flags.DEFINE_enum("scripted", "oracle", ["oracle", "always_execute", "always_refuse", "always_check"],
                  "scripted policy that writes the demonstrations")
flags.DEFINE_integer("seed", 0, "key for the scripted episodes (the simulated user's yes/no)")
flags.DEFINE_string("out", None, "also write the table as JSON here")


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from agent_rl import rollout, train
    from agent_rl.evals import copying, model_policy
    from agent_rl.evals.policies import PolicyError
    from sandbox import types as T

    try:
        policy = model_policy.load_checkpoint(FLAGS.checkpoint)
    except PolicyError as e:
        sys.exit(f"error: {e}")
    s = train.setup(policy.run_config)
    scenarios = {"train": s.train, "iid": s.iid, "heldout": s.heldout}[FLAGS.split]
    if scenarios is None or scenarios.prompt.shape[0] < FLAGS.n:
        have = 0 if scenarios is None else scenarios.prompt.shape[0]
        sys.exit(f"error: --n={FLAGS.n} but the run's {FLAGS.split} split has {have} scenarios")
    pid = jnp.full((FLAGS.n,), T.POLICIES.index(FLAGS.scripted), jnp.int32)
    traj = rollout.scripted_episodes(pid, train.take_rows(scenarios, np.arange(FLAGS.n)), s.vocab,
                                     jax.random.key(FLAGS.seed), s.env_params, max_new_tokens=s.env_params.max_tokens)
    traj = rollout.trim(traj._replace(env_state=None))
    logprobs = jax.jit(lambda p, t, v: train.sequence_logprobs(nnx.merge(policy.graphdef, p), t, v)[0])
    lp = logprobs(policy.params, jnp.asarray(traj.tokens), jnp.asarray(traj.valid))
    pieces = [s.tokenizer.decode([i]) for i in range(s.tokenizer.vocab_size)]
    table = copying.summarize(-np.asarray(lp), copying.token_classes(pieces, traj.tokens, traj.policy_mask))

    print(f"per-token loss (nats) of {FLAGS.checkpoint} on {FLAGS.n} {FLAGS.scripted} demonstrations ({FLAGS.split})")
    print("| tokens | n | mean | median |\n|---|---:|---:|---:|")
    for name, r in table.items():
        print(f"| {name} | {r['n']} | {r['mean']:.3f} | {r['median']:.3f} |")
    if FLAGS.out:
        with open(FLAGS.out, "w") as f:
            json.dump({"checkpoint": FLAGS.checkpoint, "split": FLAGS.split, "n": FLAGS.n,
                       "scripted": FLAGS.scripted, "classes": table}, f, indent=1)


if __name__ == "__main__":
    app.run(main)
