"""End to end on Hugging Face weights: `launch/train.py --config.model.hf_dir=DIR` on a tiny random Llama with a
byte-level BPE tokenizer (both written here), full fine-tuning and LoRA; then `launch/eval.py` on the LoRA run.

CI runs the LoRA run; the full fine-tuning run (~2 more minutes on 2 cores) is marked slow."""
import json
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from agent_rl import hf
from agent_rl import lora
from agent_rl import model as M
from agent_rl import tokenizer as tok_lib
from sandbox import generate
from sandbox import protocol as P

ROOT = pathlib.Path(__file__).resolve().parents[2]
SPECIALS = ["<|endoftext|>", P.IM_START, P.IM_END]


def write_tokenizer(out: pathlib.Path, vocab_size: int = 1024) -> None:
  """A ChatML byte-level BPE (GPT-2 style) trained on the scenario corpus."""
  bpe = Tokenizer(models.BPE())
  bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  bpe.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
  bpe.train_from_iterator(generate.corpus(0, 300), trainer)
  fast = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=P.IM_END, pad_token="<|endoftext|>",
                                              bos_token=P.IM_START)
  fast.save_pretrained(out)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp("tiny_llama")
  write_tokenizer(out)
  n = len(transformers.AutoTokenizer.from_pretrained(out, local_files_only=True))
  config = transformers.LlamaConfig(vocab_size=n, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                    num_attention_heads=2, num_key_value_heads=1, head_dim=16, rms_norm_eps=1e-6,
                                    tie_word_embeddings=True, max_position_embeddings=1024)
  torch.manual_seed(0)
  transformers.AutoModelForCausalLM.from_config(config).save_pretrained(out)
  return out


def _train(workdir, hf_dir, *extra, timeout=900):
  cmd = [sys.executable, str(ROOT / "launch" / "train.py"), "--config", str(ROOT / "configs" / "micro.py"),
         f"--config.workdir={workdir}", f"--config.model.hf_dir={hf_dir}", "--config.tokenizer.kind=hf",
         "--config.tokenizer.path=", *extra]
  out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
  assert out.returncode == 0, out.stderr[-3000:]
  return out.stdout


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, hf_dir):
  workdir = tmp_path_factory.mktemp("lora_run")
  stdout = _train(workdir, hf_dir, "--config.model.lora_rank=4", "--config.model.lora_alpha=8",
                  "--config.model.lora_dropout=0.1", "--config.sft.lr=1e-2")
  return workdir, stdout


def _checkpoint_arrays(workdir):
  """Names of the arrays in the newest checkpoint's `state` item (orbax's metadata file)."""
  steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  meta = json.loads((workdir / "checkpoints" / str(steps[-1]) / "state" / "_METADATA").read_text())
  return list(meta["tree_metadata"])


def test_hf_tokenizer_fits_protocol(hf_dir):
  tok = tok_lib.hf_tokenizer(hf_dir)
  assert tok.encode(P.IM_END) == [tok.eos_id] and tok.pad_id != tok.eos_id
  text = 'call {"name": "get_weather", "arguments": {"city": "Paris"}}'
  assert tok.decode(tok.encode(text)) == text


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, hf_dir):
  workdir = tmp_path_factory.mktemp("full_run")
  return workdir, _train(workdir, hf_dir)


@pytest.mark.slow  # ~2 minutes; the LoRA run below is CI's end-to-end Hugging Face training test
def test_full_finetune_end_to_end(full_run):
  workdir, stdout = full_run
  final = json.loads((workdir / "final_metrics.json").read_text())
  assert all(v is None or 0.0 <= v <= 1.0 for v in final["aligned"].values())
  assert "| metric | heldout base (SFT) | heldout aligned (GRPO) |" in stdout
  names = _checkpoint_arrays(workdir)
  assert "('params', 'embed', 'value')" in names and not any("lora" in n for n in names)


@pytest.mark.slow  # needs the full fine-tuning run above
def test_full_finetune_checkpoint_scales(full_run, hf_dir):
  """--lora_scale on a fully fine-tuned run scales its weights' change since the start: 0 is the model it started
  from (the hf_dir weights), 1 the checkpoint, 0.5 halfway."""
  workdir, _ = full_run
  from agent_rl.evals import model_policy

  start = nnx.state(hf.from_pretrained(hf_dir)[0], nnx.Param)
  trained = model_policy.load_checkpoint(str(workdir)).params
  jax.tree.map(np.testing.assert_array_equal, model_policy.load_checkpoint(str(workdir), lora_scale=0.0).params,
               start)
  half = model_policy.load_checkpoint(str(workdir), lora_scale=0.5).params
  jax.tree.map(lambda h, a, b: np.testing.assert_allclose(h, (np.asarray(a) + np.asarray(b)) / 2, atol=1e-6),
               half, start, trained)
  assert max(float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in
             zip(jax.tree.leaves(start), jax.tree.leaves(trained))) > 1e-4


def test_lora_end_to_end(lora_run, hf_dir):
  workdir, stdout = lora_run
  assert "LoRA parameters trained" in stdout
  final = json.loads((workdir / "final_metrics.json").read_text())
  assert all(v is None or 0.0 <= v <= 1.0 for k in ("base", "aligned") for v in final[k].values())
  assert "| metric | heldout base (SFT) | heldout aligned (GRPO) |" in stdout
  recs = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in recs] == list(range(1, 7)) and np.isfinite(recs[3]["sft/loss"])
  # The checkpoint holds the adapters (and their optimizer state), never the base weights.
  # Every array there is an adapter's (params, reference, Adam moments) or an optimizer counter.
  names = _checkpoint_arrays(workdir)
  assert any(n.startswith("('params', 'blocks', 'attn', 'q_lora_a'") for n in names)
  assert any(n.startswith("('ref_params', 'blocks', 'mlp', 'down_lora_b'") for n in names)
  assert all("_lora_" in n or n.startswith("('opt_state'") and "blocks" not in n for n in names), names
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["model"]["hf_dir"] == str(hf_dir) and saved["model"]["lora_rank"] == 4


def test_lora_checkpoint_evaluates_and_scales(lora_run, hf_dir, tmp_path):
  """launch/eval.py restores the adapters over the run's base; --lora_scale 0 is the base model itself."""
  workdir, _ = lora_run
  from agent_rl.evals import model_policy

  base_model, _ = hf.from_pretrained(hf_dir)
  trained = model_policy.load_checkpoint(str(workdir))
  at_zero = model_policy.load_checkpoint(str(workdir), lora_scale=0.0)
  tokens = np.asarray([[5, 9, 33, 70, 12, 7]], np.int32)
  valid = np.ones_like(tokens, bool)
  base_logits = M.forward(base_model, tokens, valid)
  np.testing.assert_array_equal(M.forward(nnx.merge(at_zero.graphdef, at_zero.params), tokens, valid), base_logits)
  assert np.abs(M.forward(nnx.merge(trained.graphdef, trained.params), tokens, valid) - base_logits).max() > 1e-4
  out = subprocess.run([sys.executable, str(ROOT / "launch" / "eval.py"), "--suite", "sandbox", "--policy",
                        f"checkpoint:{workdir}", "--limit", "8", "--safety_k", "1", "--lora_scale", "0.5",
                        "--out", str(tmp_path / "m.json")], cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "malicious_refusal" in json.loads((tmp_path / "m.json").read_text())
  bad = subprocess.run([sys.executable, str(ROOT / "launch" / "eval.py"), "--suite", "sandbox", "--policy",
                        f"hf:{hf_dir}", "--lora_scale", "0.5", "--out", str(tmp_path / "x.json")], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
  assert bad.returncode != 0 and bad.stderr.strip().splitlines()[-1].startswith("error: hf:")


def test_exported_adapters_reproduce_the_checkpoint(lora_run, hf_dir, tmp_path):
  """launch/export_adapters.py writes the run's adapters (PEFT layout, with its metrics beside them); `lora:DIR`
  over the named base is the checkpoint's model exactly, and launch/eval.py runs it."""
  workdir, _ = lora_run
  from agent_rl.evals import model_policy

  out = subprocess.run([sys.executable, str(ROOT / "launch" / "export_adapters.py"), f"--run={workdir}",
                        f"--out={tmp_path / 'adapters'}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "(rank 4, base " in out.stdout
  names = sorted(p.name for p in (tmp_path / "adapters").iterdir())
  assert names == ["adapter_config.json", "adapter_model.safetensors", "final_metrics.json", "metrics.jsonl"]
  assert json.loads((tmp_path / "adapters" / "adapter_config.json").read_text())["base_model_name_or_path"] == \
      str(hf_dir)
  ckpt, exported = model_policy.load_checkpoint(str(workdir)), model_policy.load_lora(str(tmp_path / "adapters"))
  jax.tree.map(np.testing.assert_array_equal, nnx.state(nnx.merge(exported.graphdef, exported.params)),
               nnx.state(nnx.merge(ckpt.graphdef, ckpt.params)))
  ev = subprocess.run([sys.executable, str(ROOT / "launch" / "eval.py"), "--suite", "sandbox", "--policy",
                       f"lora:{tmp_path / 'adapters'}", "--limit", "4", "--safety_k", "1", "--out",
                       str(tmp_path / "m.json")], cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert ev.returncode == 0, ev.stderr[-3000:]
  assert "malicious_refusal" in json.loads((tmp_path / "m.json").read_text())
  full = subprocess.run([sys.executable, str(ROOT / "launch" / "export_adapters.py"), f"--run={workdir}/nowhere",
                         f"--out={tmp_path / 'x'}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert full.returncode != 0 and full.stderr.strip().splitlines()[-1].startswith("error: --run=")


def test_lora_export_merges(lora_run, tmp_path):
  """save_pretrained of a LoRA model writes merged weights that transformers loads with the same logits."""
  workdir, _ = lora_run
  from agent_rl.evals import model_policy

  policy = model_policy.load_checkpoint(str(workdir))
  model = nnx.merge(policy.graphdef, policy.params)
  hf.save_pretrained(model, model.cfg, tmp_path)
  tokens = np.asarray([[5, 9, 33, 70, 12, 7, 1, 2]], np.int64)
  ours = np.asarray(M.forward(model, tokens.astype(np.int32), np.ones_like(tokens, bool)))
  theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, local_files_only=True).eval()
  with torch.no_grad():
    ref = theirs(input_ids=torch.tensor(tokens)).logits.numpy()
  np.testing.assert_allclose(ours, ref, atol=1e-5)
  assert lora.merge(model).cfg.lora_rank == 0


@pytest.mark.slow  # ~30 s; --lora_scale itself is checked above through launch/eval.py
def test_lora_scale_sweep(lora_run, tmp_path):
  workdir, _ = lora_run
  out = subprocess.run([sys.executable, str(ROOT / "launch" / "lora_scale.py"), f"--run={workdir}",
                        "--scales=0,1", "--limit=4", f"--out={tmp_path}"], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  records = [json.loads(line) for line in (tmp_path / "lora_scale.jsonl").read_text().splitlines()]
  assert [r["lora_scale"] for r in records] == [0.0, 1.0]
  assert all(0.0 <= r["eval/malicious_refusal"] <= 1.0 for r in records)
  assert (tmp_path / "lora_scale.png").stat().st_size > 1000
  bad = subprocess.run([sys.executable, str(ROOT / "launch" / "lora_scale.py"), f"--run={workdir}",
                        "--scales=0,x"], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert bad.returncode != 0 and bad.stderr.strip().splitlines()[-1].startswith("error: --scales")
