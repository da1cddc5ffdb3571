"""Load and save Hugging Face Qwen2 / Llama checkpoints (config.json + safetensors) for `agent_rl.model`.

Hugging Face linear layers store `weight[out, in]`; ours are `kernel[in, out]` with the head axes split out,
and per-layer tensors are stacked on a leading `[layers]` axis. Loading reads one tensor at a time from
safetensors (single-file or sharded with model.safetensors.index.json); nothing touches the network.
"""
from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file

from agent_rl import lora
from agent_rl import model as model_lib
from agent_rl import sharding
from agent_rl.model import ModelConfig

SUPPORTED = ("qwen2", "llama")
_IGNORED = ("rotary_emb.inv_freq",)  # buffers some older checkpoints saved; recomputed here


def config_from_hf(hf: dict[str, Any], path: str = "config.json", dtype: Any = "float32",
                   param_dtype: Any = None) -> ModelConfig:
  """ModelConfig from a parsed Hugging Face config.json (`path` only names the file in errors)."""
  def get(key, default=None):
    if key not in hf and default is None:
      raise ValueError(f"{path}: missing key {key!r}")
    return hf.get(key, default)

  model_type = hf.get("model_type")
  if model_type not in SUPPORTED:
    raise ValueError(f"{path}: model_type={model_type!r} is not supported; supported: {SUPPORTED}")
  if get("hidden_act", "silu") != "silu":
    raise ValueError(f"{path}: hidden_act={hf['hidden_act']!r}; only 'silu' (SwiGLU) is supported")
  if hf.get("use_sliding_window"):
    raise ValueError(f"{path}: use_sliding_window=true is not supported (full attention only)")
  if hf.get("mlp_bias"):
    raise ValueError(f"{path}: mlp_bias=true is not supported")
  if model_type == "llama" and hf.get("attention_bias"):
    raise ValueError(f"{path}: attention_bias=true is not supported for llama (it adds an o_proj bias)")
  # transformers >= 5 writes rope_parameters; older configs have rope_theta and rope_scaling at the top level.
  rope = dict(hf.get("rope_parameters") or {})
  theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
  scaling = hf.get("rope_scaling") or {}
  rope_type = rope.get("rope_type", scaling.get("rope_type", scaling.get("type", "default")))
  if rope_type == "llama3":
    src = rope if "factor" in rope else scaling
    rope_scaling = tuple(float(src[k]) for k in ("factor", "low_freq_factor", "high_freq_factor",
                                                  "original_max_position_embeddings"))
  elif rope_type == "default":
    rope_scaling = None
  else:
    raise ValueError(f"{path}: rope type {rope_type!r} is not supported; supported: 'default', 'llama3'")
  n_heads = get("num_attention_heads")
  d_model = get("hidden_size")
  return ModelConfig(
      vocab_size=get("vocab_size"), d_model=d_model, n_layers=get("num_hidden_layers"), n_heads=n_heads,
      n_kv_heads=hf.get("num_key_value_heads") or n_heads, head_dim=hf.get("head_dim") or d_model // n_heads,
      mlp_dim=get("intermediate_size"), rope_theta=float(theta), rms_eps=float(get("rms_norm_eps")),
      qkv_bias=model_type == "qwen2",
      tie_embeddings=bool(hf.get("tie_word_embeddings", False)), dtype=dtype,
      param_dtype=dtype if param_dtype is None else param_dtype, rope_scaling=rope_scaling)


def load_config(hf_dir: str | os.PathLike, dtype: Any = "float32", param_dtype: Any = None) -> ModelConfig:
  """ModelConfig of a local checkpoint directory, from its config.json."""
  path = pathlib.Path(hf_dir).expanduser() / "config.json"
  if not path.is_file():
    raise FileNotFoundError(f"{path}: not found (a Hugging Face model directory needs config.json)")
  try:
    hf = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON ({e})") from e
  return config_from_hf(hf, str(path), dtype, param_dtype)


def config_to_hf(cfg: ModelConfig, model_type: str | None = None) -> dict[str, Any]:
  """A Hugging Face config.json dict: Qwen2 (q/k/v biases, plain RoPE) or Llama (no biases)."""
  if model_type is None:
    model_type = "qwen2" if cfg.qkv_bias else "llama"
  if model_type not in SUPPORTED:
    raise ValueError(f"model_type={model_type!r} is not supported; supported: {SUPPORTED}")
  if (model_type == "qwen2") != cfg.qkv_bias or (model_type == "qwen2" and cfg.rope_scaling is not None):
    raise ValueError(f"cannot export as {model_type}: qwen2 has q/k/v biases and plain RoPE, llama has no "
                     f"biases (got qkv_bias={cfg.qkv_bias}, rope_scaling={cfg.rope_scaling})")
  rope = {"rope_type": "default", "rope_theta": cfg.rope_theta}
  if cfg.rope_scaling is not None:
    factor, low, high, old_len = cfg.rope_scaling
    rope.update(rope_type="llama3", factor=factor, low_freq_factor=low, high_freq_factor=high,
                original_max_position_embeddings=int(old_len))
  hf = {
      "architectures": ["Qwen2ForCausalLM" if model_type == "qwen2" else "LlamaForCausalLM"],
      "model_type": model_type, "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model,
      "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
      "num_key_value_heads": cfg.n_kv_heads, "head_dim": cfg.head_dim, "intermediate_size": cfg.mlp_dim,
      "hidden_act": "silu", "rms_norm_eps": cfg.rms_eps, "tie_word_embeddings": cfg.tie_embeddings,
      "rope_parameters": rope, "max_position_embeddings": 32768, "dtype": cfg.param_dtype,
  }
  if cfg.rope_scaling is not None:
    hf["max_position_embeddings"] = max(131072, int(cfg.rope_scaling[3]) + 1)
  if model_type == "llama":
    hf.update(attention_bias=False, mlp_bias=False)
  else:
    hf.update(use_sliding_window=False)
  return hf


def _mapping(cfg: ModelConfig) -> list[tuple[tuple[str, ...], str, Callable, Callable]]:
  """(our state path, HF name ('{i}' = layer), HF -> ours, ours -> HF) for every parameter."""
  d, h, k, hd = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
  same = lambda x: x  # noqa: E731
  def proj(*shape):  # HF weight [out, in] -> kernel [in, *out]
    return (lambda w: w.T.reshape(d, *shape)), (lambda x: x.reshape(d, -1).T)
  m = [(("embed",), "model.embed_tokens.weight", same, same),
       (("final_norm",), "model.norm.weight", same, same)]
  if not cfg.tie_embeddings:
    m.append((("lm_head",), "lm_head.weight", lambda w: w.T, lambda x: x.T))
  layer = "model.layers.{i}."
  m += [(("blocks", "attn_norm"), layer + "input_layernorm.weight", same, same),
        (("blocks", "mlp_norm"), layer + "post_attention_layernorm.weight", same, same),
        (("blocks", "attn", "q"), layer + "self_attn.q_proj.weight", *proj(h, hd)),
        (("blocks", "attn", "k"), layer + "self_attn.k_proj.weight", *proj(k, hd)),
        (("blocks", "attn", "v"), layer + "self_attn.v_proj.weight", *proj(k, hd)),
        (("blocks", "attn", "o"), layer + "self_attn.o_proj.weight",
         lambda w: w.T.reshape(h, hd, d), lambda x: x.reshape(h * hd, d).T),
        (("blocks", "mlp", "gate"), layer + "mlp.gate_proj.weight", lambda w: w.T, lambda x: x.T),
        (("blocks", "mlp", "up"), layer + "mlp.up_proj.weight", lambda w: w.T, lambda x: x.T),
        (("blocks", "mlp", "down"), layer + "mlp.down_proj.weight", lambda w: w.T, lambda x: x.T)]
  if cfg.qkv_bias:
    for name, heads in (("q", h), ("k", k), ("v", k)):
      m.append((("blocks", "attn", f"{name}_bias"), layer + f"self_attn.{name}_proj.bias",
                lambda b, heads=heads: b.reshape(heads, hd), lambda x: x.reshape(-1)))
  return m


def _tensor_index(hf_dir: pathlib.Path) -> dict[str, pathlib.Path]:
  """HF tensor name -> the safetensors file holding it."""
  index = hf_dir / "model.safetensors.index.json"
  if index.exists():
    weight_map = json.loads(index.read_text()).get("weight_map")
    if not isinstance(weight_map, dict):
      raise ValueError(f"{index}: missing 'weight_map'")
    return {name: hf_dir / file for name, file in weight_map.items()}
  single = hf_dir / "model.safetensors"
  if not single.exists():
    raise FileNotFoundError(f"{hf_dir}: neither model.safetensors nor model.safetensors.index.json found")
  with safe_open(single, "np") as f:
    return {name: single for name in f.keys()}


def from_pretrained(hf_dir: str | os.PathLike, dtype: Any = "float32", param_dtype: Any = None,
                    mesh: jax.sharding.Mesh | None = None, rules=None) -> tuple[model_lib.Transformer, ModelConfig]:
  """Load a Qwen2 / Llama checkpoint from a local directory.

  dtype is the compute dtype; param_dtype (default: dtype) the storage dtype. With a mesh, each parameter is
  placed directly with the sharding its logical axes get under `rules` (default agent_rl.sharding.DEFAULT_RULES).
  Any missing tensor, wrong shape or unexpected tensor is an error naming the file and the key.
  """
  hf_dir = pathlib.Path(hf_dir)
  config_path = hf_dir / "config.json"
  cfg = load_config(hf_dir, dtype, param_dtype)
  files = _tensor_index(hf_dir)
  with sharding.axis_rules(rules, mesh):  # eval_shape under jax.set_mesh needs logical -> mesh axis rules
    abstract = nnx.eval_shape(lambda: model_lib.Transformer(cfg, rngs=nnx.Rngs(0)))
  graphdef, abs_state = nnx.split(abstract)
  shapes = {path: var.get_value().shape for path, var in nnx.to_flat_state(abs_state)}
  pdtype = jnp.dtype(cfg.param_dtype)

  handles: dict[pathlib.Path, Any] = {}
  def read(name):
    if name not in files:
      where = hf_dir / "model.safetensors.index.json" if (hf_dir / "model.safetensors.index.json").exists() \
          else hf_dir / "model.safetensors"
      raise KeyError(f"{where}: missing tensor {name!r}")
    file = files[name]
    if file not in handles:
      if not file.exists():
        raise FileNotFoundError(f"{file}: listed for tensor {name!r} but not found")
      handles[file] = safe_open(file, "np")
    return handles[file].get_tensor(name)

  values, used = {}, set()
  for path, name, to_ours, _ in _mapping(cfg):
    names = [name.format(i=i) for i in range(cfg.n_layers)] if "{i}" in name else [name]
    parts = []
    for n in names:
      raw = read(n)
      try:
        parts.append(np.asarray(to_ours(raw), dtype=pdtype))
      except ValueError as e:
        raise ValueError(f"{files[n]}: tensor {n!r} has shape {raw.shape}, which does not fit the config "
                         f"({config_path})") from e
      used.add(n)
    value = np.stack(parts) if "{i}" in name else parts[0]
    if value.shape != shapes[path]:
      raise ValueError(f"{files[names[0]]}: tensor {names[0]!r} gives shape {value.shape}, expected "
                       f"{shapes[path]} from {config_path}")
    values[path] = value
  unexpected = sorted(n for n in files if n not in used and not n.endswith(_IGNORED)
                      and not (cfg.tie_embeddings and n == "lm_head.weight"))
  if unexpected:
    raise ValueError(f"{files[unexpected[0]]}: unexpected tensor(s) {unexpected[:5]} for a {cfg} model "
                     f"(architecture mismatch?)")

  if mesh is not None:
    named = sharding.named_shardings(abs_state, mesh, rules)
    targets = {path: var.get_value() for path, var in nnx.to_flat_state(named)}
  else:
    targets = {path: None for path in values}
  flat = [(path, var.replace(jax.device_put(values[path], targets[path])))
          for path, var in nnx.to_flat_state(abs_state)]
  return nnx.merge(graphdef, nnx.from_flat_state(flat)), cfg


def save_pretrained(model: model_lib.Transformer, cfg: ModelConfig, out_dir: str | os.PathLike,
                    model_type: str | None = None, extra_config: dict[str, Any] | None = None) -> pathlib.Path:
  """Write config.json + model.safetensors that `transformers.AutoModelForCausalLM.from_pretrained` loads.

  Tensors are written in the model's param_dtype. extra_config adds keys to config.json (e.g. eos_token_id).
  A model with LoRA adapters is written merged (W + (alpha / rank) A B): a plain checkpoint of the same function.
  """
  if cfg.lora_rank:
    model, cfg = lora.merge(model), cfg.replace(lora_rank=0)
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  state = {path: np.asarray(jax.device_get(var.get_value())) for path, var in nnx.to_flat_state(nnx.state(model))}
  tensors = {}
  for path, name, _, to_hf in _mapping(cfg):
    value = state[path]
    if "{i}" in name:
      for i in range(cfg.n_layers):
        tensors[name.format(i=i)] = np.ascontiguousarray(to_hf(value[i]))
    else:
      tensors[name] = np.ascontiguousarray(to_hf(value))
  hf = config_to_hf(cfg, model_type)
  hf.update(extra_config or {})
  (out / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
  save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
  return out
