"""Write a LoRA run's adapters as PEFT-layout files (`agent_rl.adapters`): a few MB that `launch/eval.py` loads
over the base model the run was trained from, with no checkpoint and no training.

  python launch/export_adapters.py --run runs/smollm2_lora --out models/adapters/smollm2_lora
  python launch/export_adapters.py --run runs/smollm2_lora@32 --out models/adapters/smollm2_lora_sft   # a step
  python launch/eval.py --suite sandbox --policy lora:models/adapters/smollm2_lora --out r.json

The adapter config names the run's `model.hf_dir` as its base (as the run's config gives it: a path relative to the
working directory stays relative). The run's metrics.jsonl and final_metrics.json, when present, are copied beside
the adapters so the files that reproduce a result travel with it.
"""
from __future__ import annotations

import pathlib
import shutil

from absl import app, flags, logging
from flax import nnx

from agent_rl import adapters, cli
from agent_rl.evals import model_policy
from agent_rl.evals.policies import PolicyError

flags.DEFINE_string("run", None, "workdir of a LoRA training run (WORKDIR@STEP: that checkpoint step)", required=True)
flags.DEFINE_string("out", None, "output directory for adapter_config.json + adapter_model.safetensors",
                    required=True)
FLAGS = flags.FLAGS


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  try:
    policy = model_policy.load_checkpoint(FLAGS.run)
  except PolicyError as e:
    cli.fail(f"--run={FLAGS.run}: {e}")
  cfg = policy.run_config
  if not cfg.model.lora_rank:
    cli.fail(f"--run={FLAGS.run}: the run fine-tuned every weight (model.lora_rank is 0); it has no adapters to "
             f"export (hf.save_pretrained writes its full weights)")
  if not cfg.model.hf_dir:
    cli.fail(f"--run={FLAGS.run}: the run's base is not a Hugging Face directory (model.hf_dir is empty), so an "
             f"adapter file could not name it")
  try:
    pathlib.Path(FLAGS.out).mkdir(parents=True, exist_ok=True)
  except OSError as e:
    cli.fail(f"--out={FLAGS.out}: cannot create the directory ({e.strerror})")
  out = adapters.save(nnx.merge(policy.graphdef, policy.params), FLAGS.out, base=cfg.model.hf_dir)
  workdir = model_policy.run_workdir(FLAGS.run)
  for name in ("metrics.jsonl", "final_metrics.json"):
    if (workdir / name).is_file():
      shutil.copy(workdir / name, out / name)
  size = sum(f.stat().st_size for f in out.iterdir()) / 1e6
  print(f"adapters of {FLAGS.run} (rank {cfg.model.lora_rank}, base {cfg.model.hf_dir}) -> {out} ({size:.1f} MB)")


if __name__ == "__main__":
  app.run(main)
