"""Safety and utility of a run against a test-time scale of what training changed (0 = its base, 1 = as trained).

Scaling the adapters trades safety for utility after training, without retraining (Meta SecAlign's knob). A run
that fine-tuned every weight is scaled the same way: (1 - s) * the weights it started from + s * the trained. Each
scale is evaluated on the sandbox suite (greedy, heldout by default); the rates go to `lora_scale.jsonl` and a
plot `lora_scale.png` in the run's workdir (or --out).

  python launch/lora_scale.py --run runs/smollm2 --scales 0,0.5,1,1.5 --limit 64
"""
from __future__ import annotations

import json
import pathlib

from absl import flags, logging

from agent_rl import cli, evals, plots
from agent_rl.evals import common

flags.DEFINE_string("run", None, "workdir of a training run (checkpoint:RUN is evaluated)", required=True)
flags.DEFINE_list("scales", ["0", "0.5", "1", "1.5"], "adapter scales to evaluate")
flags.DEFINE_integer("limit", 64, "scenarios of the split")
flags.DEFINE_string("split", "heldout", "sandbox split: heldout | train")
flags.DEFINE_string("out", None, "output directory (default: the run's workdir)")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  try:
    scales = [float(s) for s in FLAGS.scales]
  except ValueError:
    cli.fail(f"--scales={','.join(FLAGS.scales)}: expected comma-separated numbers")
  if FLAGS.limit < 0:
    cli.fail(f"--limit={FLAGS.limit}: must be >= 0")
  out = pathlib.Path(FLAGS.out or FLAGS.run)
  records = []
  for i, s in enumerate(scales):
    args = common.RunArgs(split=FLAGS.split, limit=FLAGS.limit, safety_k=1, lora_scale=s)
    metrics, _ = evals.SUITES["sandbox"](f"checkpoint:{FLAGS.run}", args)  # bad run or data: cli prints one line
    records.append({"step": i, "lora_scale": s, **{f"eval/{k}": v for k, v in metrics.items()}})
    print(f"lora_scale {s:g}: " + ", ".join(f"{k} {metrics[k]:.3f}" for k in plots.SAFETY + plots.UTILITY
                                            if k in metrics), flush=True)
  out.mkdir(parents=True, exist_ok=True)
  jsonl = out / "lora_scale.jsonl"
  jsonl.write_text("".join(json.dumps(r) + "\n" for r in records))
  seen = {k for r in records for k in r}
  keep = lambda names: [n for n in names if f"eval/{n.removeprefix('1-')}" in seen]  # noqa: E731
  png = plots.plot_safety_utility(jsonl, out / "lora_scale.png", keep(plots.SAFETY), keep(plots.UTILITY),
                                  x="lora_scale", title=f"{FLAGS.run}: adapters scaled at test time")
  print(f"wrote {jsonl} and {png}")


if __name__ == "__main__":
  cli.run(main)
