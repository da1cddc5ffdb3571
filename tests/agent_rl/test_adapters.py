"""LoRA adapter files (PEFT layout): they round-trip exactly, mean in transformers what they mean in our model, load
as the `lora:DIR` policy over the base they name, and bad files are one error naming the file and the tensor."""
import json

import jax
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from safetensors.numpy import load_file, save_file

from agent_rl import adapters, hf, lora
from agent_rl import model as M
from agent_rl.evals import model_policy
from agent_rl.evals.policies import PolicyError
from tests.agent_rl.test_hf import hf_logits, padded_batch
from tests.agent_rl.test_train_hf import write_tokenizer

TARGETS = ("q", "k", "o", "up", "down")


def _randomised(model, seed=0):
  """`model` with adapters whose b is random too (fresh ones are zero, which would test nothing)."""
  adapted = lora.add_lora(model, seed=seed, lora_rank=3, lora_alpha=6.0, lora_targets=TARGETS)
  graphdef, trainable, frozen = lora.split(adapted)
  rng = np.random.RandomState(seed)
  trainable = jax.tree.map(lambda x: x + 0.2 * rng.standard_normal(x.shape).astype(x.dtype), trainable)
  return nnx.merge(graphdef, trainable, frozen)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
  """A tiny random Llama with a byte-level BPE tokenizer (the `lora:` policy needs one)."""
  d = tmp_path_factory.mktemp("base")
  write_tokenizer(d, vocab_size=300)
  n = len(transformers.AutoTokenizer.from_pretrained(d, local_files_only=True))
  config = transformers.LlamaConfig(vocab_size=n, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, head_dim=8, rms_norm_eps=1e-6,
                                    tie_word_embeddings=True, max_position_embeddings=256, initializer_range=0.15)
  torch.manual_seed(0)
  torch_model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
  torch_model.save_pretrained(d)
  return d, torch_model


@pytest.fixture(scope="module")
def exported(base, tmp_path_factory):
  d, _ = base
  model = _randomised(hf.from_pretrained(d)[0])
  out = adapters.save(model, tmp_path_factory.mktemp("adapters") / "a", base=str(d))
  return model, out


def _adapter_state(model):
  return {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model, nnx.LoRAParam))}


def test_files_are_peft_layout(exported, base):
  model, out = exported
  config = json.loads((out / adapters.CONFIG).read_text())
  assert config["peft_type"] == "LORA" and config["r"] == 3 and config["lora_alpha"] == 6.0
  assert config["target_modules"] == ["q_proj", "k_proj", "o_proj", "up_proj", "down_proj"]
  assert config["base_model_name_or_path"] == str(base[0])
  tensors = load_file(str(out / adapters.WEIGHTS))
  assert len(tensors) == 2 * len(TARGETS) * model.cfg.n_layers
  heads, hd, d = model.cfg.n_heads, model.cfg.head_dim, model.cfg.d_model
  assert tensors["base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight"].shape == (3, d)
  assert tensors["base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight"].shape == (heads * hd, 3)
  assert tensors["base_model.model.model.layers.0.self_attn.o_proj.lora_A.weight"].shape == (3, heads * hd)
  assert tensors["base_model.model.model.layers.0.mlp.down_proj.lora_B.weight"].shape == (d, 3)


def test_round_trip_is_exact(exported, base):
  model, out = exported
  loaded = adapters.apply(hf.from_pretrained(base[0])[0], out)
  assert loaded.cfg.lora_rank == 3 and loaded.cfg.lora_targets == TARGETS and loaded.cfg.lora_alpha == 6.0
  want, got = _adapter_state(model), _adapter_state(loaded)
  assert want.keys() == got.keys()
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=str(k))


def test_peft_semantics_in_transformers(exported, base):
  """W + (alpha / r) B A applied to the transformers model from the file alone gives our adapted model's logits."""
  model, out = exported
  d, torch_model = base
  config = json.loads((out / adapters.CONFIG).read_text())
  scaling = config["lora_alpha"] / config["r"]
  tensors = load_file(str(out / adapters.WEIGHTS))
  merged = transformers.AutoModelForCausalLM.from_pretrained(d, attn_implementation="eager").eval()
  params = dict(merged.named_parameters())
  with torch.no_grad():
    for key, a in tensors.items():
      if ".lora_A." not in key:
        continue
      b = tensors[key.replace(".lora_A.", ".lora_B.")]
      name = key.removeprefix("base_model.model.").replace(".lora_A.weight", ".weight")
      params[name].add_(torch.tensor(scaling * (b @ a)))
  tokens, valid = padded_batch()
  ours = np.asarray(M.forward(model, tokens, valid))
  theirs = hf_logits(merged, tokens, valid)
  np.testing.assert_allclose(ours[valid], theirs[valid], atol=1e-4, rtol=1e-4)
  assert np.abs(theirs[valid] - hf_logits(torch_model, tokens, valid)[valid]).max() > 1e-2  # the adapters matter


def test_lora_policy_loads_base_plus_adapters(exported, base):
  model, out = exported
  policy = model_policy.load_lora(str(out))
  assert policy.name == f"lora:{out}"
  loaded = nnx.merge(policy.graphdef, policy.params)
  for k, v in _adapter_state(model).items():
    np.testing.assert_array_equal(_adapter_state(loaded)[k], v)
  at_zero = model_policy.load_lora(str(out), lora_scale=0.0)
  zero = nnx.merge(at_zero.graphdef, at_zero.params)
  tokens, valid = padded_batch()
  np.testing.assert_allclose(np.asarray(M.forward(zero, tokens, valid))[valid],
                             hf_logits(base[1], tokens, valid)[valid], atol=1e-4, rtol=1e-4)


def test_base_path_relative_to_the_adapter_dir(exported, base, tmp_path):
  _, out = exported
  d = tmp_path / "adapter"
  d.mkdir()
  (d / adapters.WEIGHTS).write_bytes((out / adapters.WEIGHTS).read_bytes())
  config = json.loads((out / adapters.CONFIG).read_text())
  (tmp_path / "models").mkdir()
  (tmp_path / "models" / "base").symlink_to(base[0])
  config["base_model_name_or_path"] = "../models/base"
  (d / adapters.CONFIG).write_text(json.dumps(config))
  assert adapters.base_dir(d, adapters.read_config(d)).resolve() == base[0].resolve()


def _broken(out, tmp_path, config=None, tensors=None, raw=None):
  d = tmp_path / "broken"
  d.mkdir()
  c = json.loads((out / adapters.CONFIG).read_text())
  (d / adapters.CONFIG).write_text(json.dumps({**c, **(config or {})}))
  if raw is not None:
    (d / adapters.WEIGHTS).write_bytes(raw)
  else:
    t = load_file(str(out / adapters.WEIGHTS))
    save_file(tensors(t) if tensors else t, str(d / adapters.WEIGHTS))
  return d


KEY = "base_model.model.model.layers.1.mlp.up_proj.lora_B.weight"


@pytest.mark.parametrize("case, line", [
    (dict(config={"use_rslora": True}), "use_rslora=True is not supported"),
    (dict(config={"target_modules": ["q_proj", "lm_head"]}), "target_modules=['q_proj', 'lm_head']"),
    (dict(config={"r": 0}), "r=0 must be a positive integer"),
    (dict(config={"base_model_name_or_path": "/nowhere/model"}), "base_model_name_or_path '/nowhere/model' is not"),
    (dict(tensors=lambda t: {k: v for k, v in t.items() if k != KEY}), f"missing tensor '{KEY}'"),
    (dict(tensors=lambda t: {**t, KEY: t[KEY][:, :2]}), f"tensor '{KEY}' has shape"),
    (dict(tensors=lambda t: {**t, "base_model.model.model.layers.0.mlp.gate_proj.lora_A.weight": t[KEY].T}),
     "unexpected tensor(s)"),
    (dict(raw=b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\":"), "unreadable"),
])
def test_bad_files_are_one_line_naming_the_file(exported, tmp_path, case, line):
  _, out = exported
  d = _broken(out, tmp_path, **case)
  with pytest.raises(PolicyError) as e:
    model_policy.load_lora(str(d))
  msg = str(e.value)
  assert line in msg and "\n" not in msg, msg
  assert str(d) in msg, msg
