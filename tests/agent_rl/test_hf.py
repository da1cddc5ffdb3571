"""Hugging Face Qwen2 / Llama checkpoints load with matching logits and export back to transformers."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from agent_rl import hf
from agent_rl import model as M
from agent_rl import sampling

VOCAB = 96
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16}
CASES = {
    "qwen2_tied": (transformers.Qwen2Config, dict(tie_word_embeddings=True), None),
    "qwen2_untied_sharded": (transformers.Qwen2Config, dict(tie_word_embeddings=False), "8KB"),
    "llama_untied_llama3_rope": (transformers.LlamaConfig,
                                 dict(tie_word_embeddings=False, rope_scaling=LLAMA3_ROPE, rope_theta=50000.0), None),
    "llama_tied": (transformers.LlamaConfig, dict(tie_word_embeddings=True), None),
}


def make_checkpoint(path, case, seed=0):
  config_cls, extra, shard = CASES[case]
  config = config_cls(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8, rms_norm_eps=1e-6,
                      max_position_embeddings=256, initializer_range=0.15, attn_implementation="eager", **extra)
  torch.manual_seed(seed)
  model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
  with torch.no_grad():  # biases and norms start at 0 / 1 in HF: randomise them so they are really tested
    for name, p in model.named_parameters():
      if name.endswith("bias") or "norm" in name:
        p.add_(0.1 * torch.randn_like(p))
  model.save_pretrained(path, **({"max_shard_size": shard} if shard else {}))
  return model


def padded_batch(seed=0, batch=4, length=12):
  rng = np.random.RandomState(seed)
  pad = np.array([0, 5, 2, 9])[:batch]
  valid = np.arange(length)[None] >= pad[:, None]
  tokens = np.where(valid, rng.randint(0, VOCAB, (batch, length)), 0)
  return tokens, valid


def hf_logits(model, tokens, valid):
  positions = np.maximum(np.cumsum(valid, 1) - 1, 0)
  with torch.no_grad():
    out = model(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(valid.astype(np.int64)),
                position_ids=torch.tensor(positions))
  return out.logits.float().numpy()


@pytest.fixture(scope="module", params=list(CASES))
def checkpoint(request, tmp_path_factory):
  path = tmp_path_factory.mktemp(request.param)
  return request.param, path, make_checkpoint(path, request.param)


def test_logits_match_transformers(checkpoint):
  case, path, ref_model = checkpoint
  if "sharded" in case:
    assert (path / "model.safetensors.index.json").exists() and len(list(path.glob("*.safetensors"))) > 1
  model, cfg = hf.from_pretrained(path)
  assert cfg.tie_embeddings == ref_model.config.tie_word_embeddings
  assert cfg.qkv_bias == case.startswith("qwen2")
  assert (cfg.rope_scaling is not None) == ("llama3" in case)
  for seed in range(2):
    tokens, valid = padded_batch(seed)
    ours = np.asarray(M.forward(model, jnp.asarray(tokens, jnp.int32), jnp.asarray(valid)))
    ref = hf_logits(ref_model, tokens, valid)
    assert np.abs(ref[valid]).max() > 0.5  # not a near-constant model
    np.testing.assert_allclose(ours[valid], ref[valid], atol=1e-4, rtol=0)


def test_round_trip_through_save_pretrained(checkpoint, tmp_path):
  case, path, ref_model = checkpoint
  model, cfg = hf.from_pretrained(path)
  hf.save_pretrained(model, cfg, tmp_path)
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
  assert reloaded.config.model_type == ref_model.config.model_type
  tokens, valid = padded_batch(3)
  np.testing.assert_array_equal(hf_logits(reloaded, tokens, valid)[valid], hf_logits(ref_model, tokens, valid)[valid])
  again, cfg2 = hf.from_pretrained(tmp_path)
  assert cfg2 == cfg


def test_greedy_generate_matches_transformers(checkpoint):
  _, path, ref_model = checkpoint
  model, _ = hf.from_pretrained(path)
  tokens, valid = padded_batch(5)
  new, new_valid = sampling.generate(model, jnp.asarray(tokens, jnp.int32), jnp.asarray(valid), jax.random.key(0), 8,
                                      eos_id=-1)
  with torch.no_grad():
    ref = ref_model.generate(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(valid.astype(np.int64)),
                             max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0)
  np.testing.assert_array_equal(np.asarray(new), ref[:, tokens.shape[1]:].numpy())
  assert new_valid.all()


def test_llama3_rope_frequencies_match_transformers():
  config = transformers.LlamaConfig(hidden_size=64, num_attention_heads=2, head_dim=32, rope_theta=500000.0,
                                    max_position_embeddings=131072,
                                    rope_scaling={**LLAMA3_ROPE, "factor": 32.0,
                                                  "original_max_position_embeddings": 8192})
  ref, _ = transformers.modeling_rope_utils.ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
  cfg = hf.config_from_hf(json.loads(config.to_json_string()))
  assert cfg.rope_scaling == (32.0, 1.0, 4.0, 8192.0)
  np.testing.assert_allclose(M.rope_inv_freq(cfg), ref.numpy(), rtol=1e-6)


def test_legacy_config_keys():
  """Hub configs written before transformers 5 keep rope_theta / rope_scaling at the top level."""
  legacy = {"model_type": "llama", "vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1,
            "num_attention_heads": 2, "num_key_value_heads": 1, "intermediate_size": 16, "rms_norm_eps": 1e-5,
            "rope_theta": 500000.0, "rope_scaling": {**LLAMA3_ROPE, "rope_type": "llama3"},
            "tie_word_embeddings": True}
  cfg = hf.config_from_hf(legacy)
  assert cfg.rope_theta == 500000.0 and cfg.rope_scaling == (8.0, 1.0, 4.0, 16.0) and cfg.head_dim == 4
  assert cfg.n_kv_heads == 1 and cfg.tie_embeddings and not cfg.qkv_bias


def test_bfloat16_load(checkpoint):
  _, path, _ = checkpoint
  model, cfg = hf.from_pretrained(path, dtype="bfloat16")
  assert cfg.dtype == cfg.param_dtype == "bfloat16" and model.embed[...].dtype == jnp.bfloat16
  tokens, valid = padded_batch(0)
  logits = M.forward(model, jnp.asarray(tokens, jnp.int32), jnp.asarray(valid))
  assert logits.dtype == jnp.float32 and jnp.isfinite(logits).all()


def test_errors_name_file_and_key(tmp_path):
  make_checkpoint(tmp_path, "qwen2_tied")
  config = json.loads((tmp_path / "config.json").read_text())
  (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
  with pytest.raises(ValueError, match=r"config\.json: model_type='gpt2'"):
    hf.from_pretrained(tmp_path)
  (tmp_path / "config.json").write_text(json.dumps({**config, "use_sliding_window": True}))
  with pytest.raises(ValueError, match="use_sliding_window"):
    hf.from_pretrained(tmp_path)
  (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "llama", "attention_bias": True}))
  with pytest.raises(ValueError, match="attention_bias"):
    hf.from_pretrained(tmp_path)
  (tmp_path / "config.json").write_text(json.dumps(config))

  tensors = load_file(tmp_path / "model.safetensors")
  missing = {k: v for k, v in tensors.items() if k != "model.layers.1.mlp.up_proj.weight"}
  save_file(missing, tmp_path / "model.safetensors")
  with pytest.raises(KeyError, match=r"model\.safetensors: missing tensor 'model\.layers\.1\.mlp\.up_proj\.weight'"):
    hf.from_pretrained(tmp_path)

  bad = {**tensors, "model.layers.0.self_attn.q_proj.weight": np.zeros((5, 32), np.float32)}
  save_file(bad, tmp_path / "model.safetensors")
  with pytest.raises(ValueError, match=r"model\.safetensors: tensor 'model\.layers\.0\.self_attn\.q_proj\.weight'"):
    hf.from_pretrained(tmp_path)

  extra = {**tensors, "model.layers.0.self_attn.q_norm.weight": np.ones((8,), np.float32)}
  save_file(extra, tmp_path / "model.safetensors")
  with pytest.raises(ValueError, match="unexpected tensor.*q_norm"):
    hf.from_pretrained(tmp_path)

  (tmp_path / "model.safetensors").unlink()
  with pytest.raises(FileNotFoundError, match="neither model.safetensors"):
    hf.from_pretrained(tmp_path)


@pytest.mark.parametrize("tie", [True, False])
def test_export_of_our_model_matches_in_transformers(tmp_path, tie):
  from flax import nnx
  cfg = M.tiny(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, mlp_dim=64,
               tie_embeddings=tie)
  model = M.Transformer(cfg, rngs=nnx.Rngs(3))
  hf.save_pretrained(model, cfg, tmp_path, extra_config={"eos_token_id": 5})
  assert json.loads((tmp_path / "config.json").read_text())["eos_token_id"] == 5
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
  assert reloaded.config.model_type == "qwen2"
  tokens, valid = padded_batch(1)
  ours = np.asarray(M.forward(model, jnp.asarray(tokens, jnp.int32), jnp.asarray(valid)))
  np.testing.assert_allclose(ours[valid], hf_logits(reloaded, tokens, valid)[valid], atol=1e-4, rtol=0)
