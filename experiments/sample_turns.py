"""What a checkpoint writes as its first turn, sampled, for one kind of user: the decisions and the texts.

  python experiments/sample_turns.py --checkpoint runs/tiny@550 --user sensitive --temperature 1.0 --n 128

Samples `--k` episodes for each of the split's first scenarios of `--user` kind (up to `--n` episodes), prints the
share of each user decision and `--show` first turns (the policy's text up to its end-of-turn token), grouped by
decision, with the shaped reward each decision earned. Useful to see whether a base tries a check and botches it,
or never tries.
"""
import collections

from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "training workdir (or its checkpoints/), optionally @STEP", required=True)
flags.DEFINE_enum("split", "iid", ["train", "iid", "heldout"], "scenarios")
flags.DEFINE_enum("user", "sensitive", ["benign", "malicious", "sensitive"], "user kind")
flags.DEFINE_integer("n", 128, "episodes")
flags.DEFINE_integer("k", 4, "episodes per scenario")
flags.DEFINE_float("temperature", 1.0, "sampling temperature")
flags.DEFINE_integer("show", 4, "first turns printed per decision")
flags.DEFINE_integer("seed", 0, "sampling key")
flags.DEFINE_bool("whole", False, "print whole episodes (policy turns and env turns), not first turns")
flags.DEFINE_integer("chars", 300, "characters printed per episode")


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    import jax
    import numpy as np

    from agent_rl import rollout, setup, steps
    from agent_rl.evals import model_policy
    from sandbox import compile as compile_lib
    from sandbox import types as T

    policy = model_policy.load_checkpoint(FLAGS.checkpoint)
    s = setup.make_setup(policy.run_config)
    sc = {"train": s.train, "iid": s.iid, "heldout": s.heldout}[FLAGS.split]
    kind = T.KIND_NAMES.index(FLAGS.user)
    rows = np.flatnonzero(np.asarray(sc.user_kind) == kind)[: -(-FLAGS.n // FLAGS.k)]
    batch = rollout.trim_prompts(rollout.repeat_group(compile_lib.take(sc, rows), FLAGS.k))
    traj = jax.jit(rollout.sample_episodes, static_argnames=("max_new_tokens", "halvings"))(
        policy.graphdef, policy.params, batch, s.vocab, jax.random.key(FLAGS.seed), s.env_params,
        FLAGS.temperature, max_new_tokens=s.env_params.max_tokens)
    outcome, reward, _ = steps.score(policy.run_config.reward, traj.env_state, batch)
    decisions, reward = np.asarray(outcome.user_decision), np.asarray(reward)
    tokens, mask = np.asarray(traj.tokens), np.asarray(traj.policy_mask)
    eos = s.tokenizer.eos_id
    by, paid = collections.defaultdict(list), collections.defaultdict(list)
    valid = np.asarray(traj.valid)
    for i, d in enumerate(decisions):
        if FLAGS.whole:  # the episode after the prompt: policy turns and what the env inserted
            start = int(np.argmax(mask[i]))
            text = s.tokenizer.decode(tokens[i][start:][valid[i][start:]].tolist())
        else:  # the first policy turn, up to its end-of-turn token
            pol = tokens[i][mask[i]].tolist()
            text = s.tokenizer.decode(pol[: pol.index(eos)] if eos in pol else pol)
        by[T.DECISION_NAMES[int(d)]].append(text)
        paid[T.DECISION_NAMES[int(d)]].append(float(reward[i]))
    n = len(decisions)
    print(f"{FLAGS.checkpoint} {FLAGS.split} {FLAGS.user} users, {n} episodes at temperature {FLAGS.temperature}")
    for name, texts in sorted(by.items(), key=lambda kv: -len(kv[1])):
        r = np.asarray(paid[name])
        print(f"\n## {name}: {len(texts)} ({len(texts) / n:.3f}), reward mean {r.mean():.2f} min {r.min():.2f} "
              f"max {r.max():.2f}")
        for t, x in list(zip(texts, r))[: FLAGS.show]:
            print(f"  {x:.2f}", repr(t[: FLAGS.chars]))


if __name__ == "__main__":
    app.run(main)
