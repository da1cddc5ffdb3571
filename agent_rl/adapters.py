"""LoRA adapter files in PEFT's layout: a few MB that turn an imported base model into a trained one.

A directory holds `adapter_config.json` and `adapter_model.safetensors`, as Hugging Face PEFT writes them:

    adapter_config.json         {"peft_type": "LORA", "r": 16, "lora_alpha": 32.0, "target_modules": ["q_proj", ...],
                                 "base_model_name_or_path": "models/smollm2-135m-instruct", ...}
    adapter_model.safetensors   base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight  [r, in_features]
                                base_model.model.model.layers.{i}.self_attn.q_proj.lora_B.weight  [out_features, r]
                                ... for every targeted projection of every layer

The adapted projection is W x + (lora_alpha / r) B A x, PEFT's definition without rsLoRA, which is also
`agent_rl.model.Projections.project`'s. Our adapters are stacked over layers with the projection's own axes
(`q_lora_a` [layers, d, r], `q_lora_b` [layers, r, heads, head_dim]); a file row is one layer's, flattened to
PEFT's [r, in] / [out, r]. The base is named by path (`base_model_name_or_path`, resolved from the working
directory, then from the adapter directory), so an adapter file never holds base weights.
"""
from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import jax
import numpy as np
from flax import nnx
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from agent_rl import lora
from agent_rl import model as model_lib

CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
# Our projection names -> the Hugging Face module under each decoder layer.
MODULES = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
           "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}
PREFIX = "base_model.model.model.layers.{i}."


class AdapterError(ValueError):
  """A missing, unreadable or inconsistent adapter file (the message names the file and the tensor or key)."""


def _group(name: str) -> str:
  return "attn" if name in ("q", "k", "v", "o") else "mlp"


def _key(i: int, name: str, half: str) -> str:
  return PREFIX.format(i=i) + f"{MODULES[name]}.lora_{half}.weight"


def save(model: model_lib.Transformer, out_dir: str | os.PathLike, base: str) -> pathlib.Path:
  """Write `model`'s adapters (it must have some) to `out_dir`, naming `base` (the base model's directory) in the
  config. Tensors are written in float32 whatever the training dtype."""
  cfg = model.cfg
  if not cfg.lora_rank:
    raise AdapterError(f"{out_dir}: the model has no LoRA adapters to save (lora_rank is 0)")
  flat = {path: np.asarray(jax.device_get(var.get_value()), np.float32)
          for path, var in nnx.to_flat_state(nnx.state(model, nnx.LoRAParam))}
  r, tensors = cfg.lora_rank, {}
  for name in cfg.lora_targets:
    a, b = (flat[("blocks", _group(name), f"{name}_lora_{h}")] for h in ("a", "b"))
    for i in range(cfg.n_layers):
      tensors[_key(i, name, "A")] = np.ascontiguousarray(a[i].reshape(-1, r).T)  # [r, in]
      tensors[_key(i, name, "B")] = np.ascontiguousarray(b[i].reshape(r, -1).T)  # [out, r]
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": str(base), "r": r,
            "lora_alpha": float(cfg.lora_alpha), "lora_dropout": float(cfg.lora_dropout),
            "target_modules": [MODULES[n].split(".")[1] for n in cfg.lora_targets], "bias": "none",
            "fan_in_fan_out": False, "use_rslora": False, "use_dora": False, "inference_mode": True}
  (out / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
  save_file(tensors, str(out / WEIGHTS), metadata={"format": "pt"})
  return out


def read_config(adapter_dir: str | os.PathLike) -> dict[str, Any]:
  """The adapter config, checked: LoRA without rsLoRA, DoRA, fan-in-fan-out or trained biases, on our targets.
  Returns it with `lora` added: the ModelConfig fields (lora_rank, lora_alpha, lora_targets, lora_dropout)."""
  path = pathlib.Path(adapter_dir) / CONFIG
  if not path.is_file():
    raise AdapterError(f"{path}: no adapter config (expected {CONFIG} and {WEIGHTS} in {adapter_dir})")
  try:
    config = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise AdapterError(f"{path}: not JSON ({e})") from None
  unsupported = {"peft_type": "LORA", "use_rslora": False, "use_dora": False, "fan_in_fan_out": False, "bias": "none"}
  for key, want in unsupported.items():
    if config.get(key, want) != want:
      raise AdapterError(f"{path}: {key}={config[key]!r} is not supported (expected {want!r})")
  for key in ("r", "lora_alpha", "target_modules", "base_model_name_or_path"):
    if key not in config:
      raise AdapterError(f"{path}: missing key {key!r}")
  ours = {hf.split(".")[1]: name for name, hf in MODULES.items()}
  targets = config["target_modules"]
  if isinstance(targets, str) or any(t not in ours for t in targets) or not targets:
    raise AdapterError(f"{path}: target_modules={targets!r}: expected a list of {sorted(ours)}")
  if not isinstance(config["r"], int) or config["r"] < 1:
    raise AdapterError(f"{path}: r={config['r']!r} must be a positive integer")
  config["lora"] = dict(lora_rank=config["r"], lora_alpha=float(config["lora_alpha"]),
                        lora_targets=tuple(n for n in MODULES if MODULES[n].split(".")[1] in targets),
                        lora_dropout=float(config.get("lora_dropout", 0.0)))
  return config


def base_dir(adapter_dir: str | os.PathLike, config: dict[str, Any]) -> pathlib.Path:
  """The base model's directory the config names: as given (from the working directory), else relative to the
  adapter directory."""
  base = pathlib.Path(config["base_model_name_or_path"]).expanduser()
  for candidate in (base, pathlib.Path(adapter_dir) / base):
    if (candidate / "config.json").is_file():
      return candidate
  raise AdapterError(f"{pathlib.Path(adapter_dir) / CONFIG}: base_model_name_or_path {str(base)!r} is not a model "
                     f"directory (no config.json there or under {adapter_dir}); import it first, e.g. "
                     f"`python launch/import_model.py --out {base}`")


def apply(model: model_lib.Transformer, adapter_dir: str | os.PathLike,
          config: dict[str, Any] | None = None) -> model_lib.Transformer:
  """`model` (a base without adapters) with the adapters of `adapter_dir` added, in the model's param dtype.
  config: `read_config(adapter_dir)` if the caller has it already. Any missing, extra or misshapen tensor is an
  AdapterError naming the file and the tensor."""
  config = read_config(adapter_dir) if config is None else config
  path = pathlib.Path(adapter_dir) / WEIGHTS
  if not path.is_file():
    raise AdapterError(f"{path}: no adapter weights")
  try:
    tensors = load_file(str(path))
  except (SafetensorError, OSError) as e:
    raise AdapterError(f"{path}: unreadable ({str(e).splitlines()[0][:200]})") from None
  adapted = lora.with_config(model, model.cfg.replace(**config["lora"]))
  cfg, r, used, flat = adapted.cfg, adapted.cfg.lora_rank, set(), []
  for p, var in nnx.to_flat_state(nnx.state(adapted, nnx.LoRAParam)):
    name, half = p[-1].split("_lora_")
    shape = var.get_value().shape  # [layers, *in, r] (a) or [layers, r, *out] (b)
    rows = []
    for i in range(cfg.n_layers):
      key = _key(i, name, half.upper())
      if key not in tensors:
        raise AdapterError(f"{path}: missing tensor {key!r}")
      t = tensors[key]
      want = (r, int(np.prod(shape[1:-1]))) if half == "a" else (int(np.prod(shape[2:])), r)
      if t.shape != want:
        raise AdapterError(f"{path}: tensor {key!r} has shape {t.shape}, expected {want} for r={r} on the base "
                           f"model")
      rows.append(t.T.reshape(shape[1:]))
      used.add(key)
    flat.append((p, var.replace(np.stack(rows).astype(var.get_value().dtype))))
  extra = sorted(set(tensors) - used)
  if extra:
    raise AdapterError(f"{path}: unexpected tensor(s) {extra[:3]} (not a target of {CONFIG} on this base model)")
  graphdef, _, frozen = lora.split(adapted)
  return nnx.merge(graphdef, nnx.from_flat_state(flat), frozen)
