"""Low-rank adapters on a `agent_rl.model.Transformer`: add them to loaded weights, split trainable from frozen,
scale them at test time, merge them into the base for export.

The adapters are `nnx.LoRAParam` variables next to the weights they adapt (`blocks.attn.q_lora_a` [layers, d, r],
`blocks.attn.q_lora_b` [layers, r, heads, hd], ...); `agent_rl.model.Projections.project` adds
(alpha / rank) * b(a(x)) to the weight's output. Training differentiates the adapter state only, so the frozen
base gets no gradient and no optimizer state, and a checkpoint holds the adapters alone.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from agent_rl import model as model_lib
from agent_rl import sharding


def split(model: model_lib.Transformer) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
  """(graphdef, trainable, frozen): with LoRA the adapters and the base weights; without, every parameter and
  an empty state. `nnx.merge(graphdef, trainable, frozen)` rebuilds the model."""
  if model.cfg.lora_rank:
    return nnx.split(model, nnx.LoRAParam, nnx.Param)
  graphdef, params = nnx.split(model, nnx.Param)
  return graphdef, params, nnx.State({})


def full_state(trainable: nnx.State, frozen: nnx.State) -> nnx.State:
  """One state holding both halves of `split`: what rollouts and evaluation merge with the graphdef."""
  return nnx.merge_state(trainable, frozen) if len(frozen) else trainable


NUMERICS = ("dtype", "param_dtype", "remat", "lora_rank", "lora_alpha", "lora_targets", "lora_dropout", "decode_block",
            "train_layers")


def with_train_layers(graphdef: nnx.GraphDef, cfg: model_lib.ModelConfig, n: int) -> nnx.GraphDef:
  """The graphdef of `split` for the same parameters with `ModelConfig.train_layers = n`: merged with them it
  computes the same values, but gradients reach only the top n blocks (0: every parameter, `graphdef` itself)."""
  if n == cfg.train_layers:
    return graphdef
  build = lambda: model_lib.Transformer(cfg.replace(train_layers=n), rngs=nnx.Rngs(0))  # noqa: E731
  with sharding.axis_rules():
    return split(nnx.eval_shape(build))[0]


def update_mask(params: nnx.State, n_layers: int, train_layers: int):
  """For an optimizer (`steps.make_optimizer`): a pytree like `params` of 0/1 multipliers, broadcastable to each
  leaf, that keeps updates (weight decay included) off what `train_layers` freezes: the embedding and the blocks
  below the top `train_layers` (block leaves are stacked [layers, ...]). None when every parameter trains."""
  if not train_layers:
    return None
  top = (jnp.arange(n_layers) >= n_layers - train_layers)

  def mask(path, leaf):
    name = getattr(path[0], "key", None)
    if name == "blocks":
      return top.reshape((n_layers,) + (1,) * (leaf.ndim - 1)).astype(leaf.dtype)
    return jnp.asarray(0.0 if name == "embed" else 1.0, leaf.dtype)
  return jax.tree_util.tree_map_with_path(mask, params)


def shapes(cfg: model_lib.ModelConfig) -> dict[str, Any]:
  """The fields of a config that describe its base weights (all but dtypes, remat and LoRA)."""
  return {k: v for k, v in cfg.to_dict().items() if k not in NUMERICS}


def with_config(model: model_lib.Transformer, cfg: model_lib.ModelConfig, seed: int = 0) -> model_lib.Transformer:
  """`model`'s weights under `cfg`, which may add adapters (fresh, so the function is unchanged: b is zero) or
  change remat / dtypes, but not the base weights' shapes.

  Only the adapters are initialised (jit drops the base weights' initialisation, whose result is unused), so this
  costs the adapters' size, not the model's."""
  if model.cfg.lora_rank:
    raise ValueError("with_config: the model already has adapters")
  if shapes(cfg) != shapes(model.cfg):
    raise ValueError(f"with_config: {cfg} does not describe the weights of {model.cfg}")
  build = lambda: model_lib.Transformer(cfg, rngs=nnx.Rngs(seed))  # noqa: E731
  with sharding.axis_rules():  # logical axis names under a current mesh (jax.set_mesh), if any
    graphdef, _ = nnx.split(nnx.eval_shape(build))
    adapters = jax.jit(lambda: nnx.state(build(), nnx.LoRAParam))() if cfg.lora_rank else nnx.State({})
  pdtype = jnp.dtype(cfg.param_dtype)
  base = jax.tree.map(lambda x: x.astype(pdtype), nnx.state(model, nnx.Param))
  return nnx.merge(graphdef, base, adapters)


def add_lora(model: model_lib.Transformer, seed: int = 0, **lora: Any) -> model_lib.Transformer:
  """A copy of `model` with fresh adapters: lora_rank (> 0), lora_alpha, lora_targets, lora_dropout as in
  ModelConfig. The adapters' b is zero, so the new model computes exactly what `model` does."""
  cfg = model.cfg.replace(**lora)
  if not cfg.lora_rank:
    raise ValueError(f"add_lora: lora_rank must be positive, got {cfg.lora_rank}")
  return with_config(model, cfg, seed)


def scale(adapters: nnx.State, factor: float) -> nnx.State:
  """Adapters whose contribution is multiplied by `factor` (b scaled): 0 gives the base, 1 the trained model,
  values between and above interpolate and extrapolate (the test-time knob of Meta SecAlign)."""
  flat = [(path, var.replace(var.get_value() * factor) if path[-1].endswith("_lora_b") else var)
          for path, var in nnx.to_flat_state(adapters)]
  return nnx.from_flat_state(flat)


def interpolate(start: nnx.State, trained: nnx.State, factor: float) -> nnx.State:
  """(1 - factor) * start + factor * trained, leaf by leaf in float32 (cast back): the knob of `scale` for a run
  that fine-tuned every weight, with 0 exactly the weights it started from and 1 exactly the trained ones."""
  def mix(a, b):
    return ((1.0 - factor) * a.astype(jnp.float32) + factor * b.astype(jnp.float32)).astype(b.dtype)
  return jax.tree.map(mix, start, trained)


def _merge_weight(w: jax.Array, a: jax.Array, b: jax.Array, coef: float) -> jax.Array:
  """w [L, *in, *out] + coef * a [L, *in, r] . b [L, r, *out], in float32, cast back to w's dtype."""
  delta = jax.vmap(lambda a, b: jnp.tensordot(a, b, 1))(a.astype(jnp.float32), b.astype(jnp.float32))
  return (w.astype(jnp.float32) + coef * delta).astype(w.dtype)


def merge(model: model_lib.Transformer) -> model_lib.Transformer:
  """The same function without adapters: every targeted weight becomes W + (alpha / rank) A B."""
  cfg = model.cfg
  if not cfg.lora_rank:
    return model
  plain = cfg.replace(lora_rank=0)
  with sharding.axis_rules():
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: model_lib.Transformer(plain, rngs=nnx.Rngs(0))))
  flat = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
  coef = cfg.lora_alpha / cfg.lora_rank
  out = []
  for path, var in flat.items():
    name = path[-1]
    if name.endswith(("_lora_a", "_lora_b")):
      continue
    a_path, b_path = path[:-1] + (f"{name}_lora_a",), path[:-1] + (f"{name}_lora_b",)
    if a_path in flat:
      var = var.replace(_merge_weight(var.get_value(), flat[a_path].get_value(), flat[b_path].get_value(), coef))
    out.append((path, var))
  return nnx.merge(graphdef, nnx.from_flat_state(out))
