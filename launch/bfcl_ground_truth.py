"""Write BFCL's ground truth as a replay file: one `{"id", "output"}` line per case, the first acceptable value of
every parameter rendered as protocol text. Scoring it checks the AST checker against the data itself:

    python launch/bfcl_ground_truth.py --out bfcl_gt.jsonl
    python launch/eval.py --suite bfcl --policy replay:bfcl_gt.jsonl --out bfcl_gt.json
"""
from absl import flags

from agent_rl import cli
from agent_rl.evals import bfcl, common

flags.DEFINE_string("data_dir", None, "benchmark data root (default: $AGENT_RL_BENCHDATA)")
flags.DEFINE_string("out", None, "replay JSONL to write", required=True)
FLAGS = flags.FLAGS


def main(argv):
    del argv
    problem = cli.unwritable(FLAGS.out)
    if problem:
        cli.fail(f"--out={FLAGS.out}: {problem}")
    cases = bfcl.load_cases(common.resolve_data_dir(FLAGS.data_dir, "bfcl"))
    outputs = bfcl.ground_truth_outputs(cases)
    common.write_jsonl(FLAGS.out, [{"id": k, "output": v} for k, v in outputs.items()])
    print(f"wrote {len(outputs)} ground-truth outputs to {FLAGS.out}")


if __name__ == "__main__":
    cli.run(main)
