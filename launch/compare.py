"""Evaluate named variants on several suites into one results file, and print the tables that compare them.

  python launch/compare.py --out docs/results_smollm2.json --markdown /tmp/tables.md \
      --variant no_defense=hf:models/smollm2-base \
      --variant prompt_guarded=prompt_guard:hf:models/smollm2-base \
      --variant ours=lora:models/adapters/smollm2-ours \
      --suites sandbox,injecagent,bfcl,agent_safetybench

Each (variant, suite) is run as `launch/eval.py --suite SUITE --policy SPEC` would run it, and its metrics go into
--out (`agent_rl.evals.compare` gives the layout) as soon as it finishes. Re-running the command skips what the file
already holds with the same policy and settings, so a long evaluation resumes where it was stopped; a variant given
a new policy, or a suite given new settings, is evaluated again. --markdown writes one table per suite, variants as
rows, in the order of --variant.
"""
from __future__ import annotations

import time

from absl import flags, logging
from ml_collections import config_flags

from agent_rl import cli, evals
from agent_rl.evals import common, compare

FLAGS = flags.FLAGS
flags.DEFINE_multi_string("variant", [], "NAME=POLICY_SPEC (a launch/eval.py --policy), repeated; table order")
flags.DEFINE_multi_string("scale", [], "NAME=S: evaluate variant NAME at --lora_scale S (default 1)")
flags.DEFINE_list("suites", list(compare.COLUMNS), "suites to run, in order")
flags.DEFINE_multi_string("split", [], "SUITE=SPLIT: a suite's --split (default: the suite's)")
flags.DEFINE_string("out", None, "results JSON (read first: what it holds is not run again)", required=True)
flags.DEFINE_string("markdown", None, "also write the tables here")
flags.DEFINE_string("data_dir", None, "benchmark data root (default: $AGENT_RL_BENCHDATA)")
flags.DEFINE_integer("limit", 0, "at most this many cases per data file (0 = all); sandbox: scenarios (0 = 440)")
flags.DEFINE_enum("tool_style", "compact", ["compact", "json"], "how system prompts list tools")
flags.DEFINE_integer("safety_k", 0, "sandbox: sampled episodes per scenario for safety_at_k (0: 4)")
flags.DEFINE_string("judge_dir", None, "agent_safetybench: local judge checkpoint (ShieldAgent)")
config_flags.DEFINE_config_file("config", None, "ml_collections config passed to model policies", lock_config=False)


def _pairs(values: list[str], flag: str) -> dict[str, str]:
    out = {}
    for v in values:
        name, sep, rest = v.partition("=")
        if not sep or not name or not rest:
            cli.fail(f"--{flag}={v}: expected NAME=VALUE")
        if name in out:
            cli.fail(f"--{flag}={v}: {name!r} given twice")
        out[name] = rest
    return out


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    variants, splits = _pairs(FLAGS.variant, "variant"), _pairs(FLAGS.split, "split")
    try:
        scales = {k: float(v) for k, v in _pairs(FLAGS.scale, "scale").items()}
    except ValueError:
        cli.fail(f"--scale={','.join(FLAGS.scale)}: each value must be a number")
    for problem in (["--variant: none given"] if not variants else []) + \
            [f"--suites: unknown suite {s!r}; registered: {sorted(evals.SUITES)}" for s in FLAGS.suites
             if s not in evals.SUITES or s not in compare.COLUMNS] + \
            [f"--scale {n}=...: no --variant named {n!r}" for n in scales if n not in variants] + \
            [f"--split {s}=...: {s!r} is not in --suites" for s in splits if s not in FLAGS.suites]:
        cli.fail(problem)
    if FLAGS.limit < 0 or FLAGS.safety_k < 0:
        cli.fail(f"--limit={FLAGS.limit} --safety_k={FLAGS.safety_k}: each must be >= 0 (0 = all / the default)")
    for name in ("out", "markdown"):
        problem = cli.unwritable(getattr(FLAGS, name))
        if problem:
            cli.fail(f"--{name}={getattr(FLAGS, name)}: {problem}")
    results = compare.load(FLAGS.out)
    for suite in FLAGS.suites:
        for name, spec in variants.items():
            args = common.RunArgs(FLAGS.data_dir, splits.get(suite, ""), FLAGS.limit, FLAGS.tool_style,
                                  FLAGS.config, FLAGS.judge_dir, FLAGS.safety_k, scales.get(name, 1.0))
            settings = compare.settings_key(args)
            if compare.has(results, name, spec, args.lora_scale, suite, settings):
                print(f"{name} / {suite}: in {FLAGS.out} already", flush=True)
                continue
            t0 = time.time()
            metrics, _ = evals.SUITES[suite](spec, args)
            for line in compare.record(results, name, spec, args.lora_scale, suite, metrics, settings):
                print(f"warning: dropped {line}", flush=True)
            compare.save(FLAGS.out, results)
            print(f"{name} / {suite}: {len(metrics)} metrics in {time.time() - t0:.0f} s", flush=True)
    text = compare.tables(results, list(variants) + [n for n in results["variants"] if n not in variants])
    print(text)
    if FLAGS.markdown:
        with open(FLAGS.markdown, "w", encoding="utf-8") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    cli.run(main)
