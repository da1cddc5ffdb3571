"""Does a trained policy copy argument values? Its per-token loss on scripted demonstrations, by kind of token.

  python experiments/probe_copy.py --checkpoint runs/tiny            # the latest step: the aligned policy
  python experiments/probe_copy.py --checkpoint runs/tiny@400 --split iid --n 64 --out copy.json   # the SFT base

Renders `--n` episodes of the scripted `--scripted` policy on a split of the run's own scenarios, scores every
policy token under the checkpoint, and prints the count, mean and median loss (nats) of each class of
`experiments/copying.py`: digits that start or continue a number, and other tokens, inside tool calls or not.
A continuing digit at ~ln 10 = 2.30 nats is a guess: the policy does not copy the value from the request.
"""
import json

from absl import flags, logging

from agent_rl import cli

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

    import copying  # experiments/copying.py, beside this script
    from agent_rl import rollout, setup, steps
    from agent_rl.evals import model_policy
    from sandbox import compile as compile_lib
    from sandbox import types as T

    problem = cli.unwritable(FLAGS.out)
    if problem:
        cli.fail(f"--out={FLAGS.out}: {problem}")
    policy = model_policy.load_checkpoint(FLAGS.checkpoint)  # a PolicyError: cli prints one line
    s = setup.make_setup(policy.run_config)
    scenarios = {"train": s.train, "iid": s.iid, "heldout": s.heldout}[FLAGS.split]
    if scenarios is None or scenarios.prompt.shape[0] < FLAGS.n:
        have = 0 if scenarios is None else scenarios.prompt.shape[0]
        cli.fail(f"--n={FLAGS.n} but the run's {FLAGS.split} split has {have} scenarios")
    pid = jnp.full((FLAGS.n,), T.POLICIES.index(FLAGS.scripted), jnp.int32)
    rows = rollout.trim_prompts(compile_lib.take(scenarios, np.arange(FLAGS.n)))
    traj = rollout.scripted_episodes(pid, rows, s.vocab, jax.random.key(FLAGS.seed), s.env_params,
                                     max_new_tokens=s.env_params.max_tokens)
    traj = rollout.trim(traj._replace(env_state=None))
    logprobs = jax.jit(lambda p, t, v: steps.sequence_logprobs(nnx.merge(policy.graphdef, p), t, v)[0])
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
    cli.run(main)
