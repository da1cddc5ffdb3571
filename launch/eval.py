"""Evaluate a policy on one benchmark suite; print a markdown table and write the metrics as JSON.

  python launch/eval.py --suite injecagent --policy always_execute --out results.json
  python launch/eval.py --suite bfcl --policy replay:outputs.jsonl --split simple_python,multiple --out r.json
  python launch/eval.py --suite sandbox --policy checkpoint:runs/tiny --out r.json
  python launch/eval.py --suite injecagent --policy lora:models/adapters/NAME --lora_scale 0.5 --out r.json
  python launch/eval.py --suite agent_safetybench --policy hf:/models/qwen --judge_dir /models/ShieldAgent --out r.json

Suites: the keys of `agent_rl.evals.SUITES` (injecagent, bfcl, agent_safetybench, sandbox).
Policies: see `agent_rl.evals.policies` (oracle, always_execute, always_refuse, always_check, replay:FILE, and the
registered model policies). Benchmark data: --data_dir or $AGENT_RL_BENCHDATA.

Several processes (launch/train.py's flags: --coordinator_address, --num_processes, --process_id, or none in a
detected TPU pod / SLURM / Open MPI job): every process evaluates the whole suite on its own devices, process 0 prints
and writes.
"""
from __future__ import annotations

from absl import flags, logging
from ml_collections import config_flags

from agent_rl import cli, distributed, evals
from agent_rl.evals import common

FLAGS = flags.FLAGS
flags.DEFINE_string("suite", None, "benchmark suite: injecagent | bfcl | agent_safetybench | sandbox", required=True)
flags.DEFINE_string("policy", None, "policy spec: oracle | always_execute | always_refuse | always_check | "
                    "replay:FILE | checkpoint:PATH | hf:DIR | lora:DIR | prompt_guard:SPEC", required=True)
flags.DEFINE_string("split", "", "suite-specific selection: injecagent base|enhanced; bfcl comma-separated "
                    "categories; agent_safetybench fulfillable|unfulfillable; sandbox heldout|train (default "
                    "heldout); '' = all")
flags.DEFINE_string("data_dir", None, "benchmark data root (default: $AGENT_RL_BENCHDATA)")
flags.DEFINE_integer("limit", 0, "at most this many cases per data file (0 = all); sandbox: scenarios "
                     "(0 = 440)")
flags.DEFINE_enum("tool_style", "compact", ["compact", "json"], "how system prompts list tools")
flags.DEFINE_integer("safety_k", 0, "sandbox: sampled episodes per scenario for safety_at_k (0: 4)")
flags.DEFINE_string("judge_dir", None, "agent_safetybench: local judge checkpoint (ShieldAgent) for judge metrics")
flags.DEFINE_string("out", None, "write the metrics JSON here", required=True)
flags.DEFINE_string("details_out", None, "write per-case details (JSONL) here")
flags.DEFINE_integer("show_failures", 20, "bfcl with a replay policy: how many failing cases to list")
flags.DEFINE_float("lora_scale", 1.0, "checkpoint: and lora: policies: scale what training changed, a LoRA "
                   "run's adapters or a full run's weights (0 = the base model, 1 = as trained; values between and "
                   "above are allowed): the safety / utility knob")
config_flags.DEFINE_config_file("config", None, "ml_collections config passed to model policies", lock_config=False)
distributed.define_flags()


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # checkpoint restores log every step at INFO
    distributed.initialize_from_flags()  # before any JAX computation; nothing on one machine outside a cluster
    if FLAGS.suite not in evals.SUITES:
        cli.fail(f"--suite: unknown suite {FLAGS.suite!r}; registered: {sorted(evals.SUITES)}")
    if FLAGS.limit < 0 or FLAGS.safety_k < 0:
        cli.fail(f"--limit={FLAGS.limit} --safety_k={FLAGS.safety_k}: each must be >= 0 (0 = all / the default)")
    for name in ("out", "details_out"):  # paths are checked before the evaluation, not after it
        problem = cli.unwritable(getattr(FLAGS, name))
        if problem:
            cli.fail(f"--{name}={getattr(FLAGS, name)}: {problem}")
    args = common.RunArgs(FLAGS.data_dir, FLAGS.split, FLAGS.limit, FLAGS.tool_style, FLAGS.config, FLAGS.judge_dir,
                          FLAGS.safety_k, FLAGS.lora_scale)
    metrics, details = evals.SUITES[FLAGS.suite](FLAGS.policy, args)  # bad data or spec: cli prints one line
    print(common.markdown_table(metrics, f"{FLAGS.suite} ({FLAGS.policy})"))
    if FLAGS.suite == "bfcl" and FLAGS.policy.startswith("replay:"):
        print(f"\n{len(details)} failing case(s)" + (":" if details else ""))
        for f in details[:FLAGS.show_failures]:
            print(f"- {f['id']} [{f['category']}] {f['error_type']}: {f['message']}")
    if not distributed.is_primary():  # every process computed the same metrics; one writes them
        return
    common.write_results(FLAGS.out, metrics)
    if FLAGS.details_out:
        common.write_jsonl(FLAGS.details_out, details)


if __name__ == "__main__":
    cli.run(main)
