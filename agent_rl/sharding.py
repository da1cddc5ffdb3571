"""Device meshes and the mapping from logical parameter axes to mesh axes.

Every model parameter names its axes (`("layers", "embed", "mlp")`, see agent_rl.model). A rule table maps each
logical name to a mesh axis (or several, or None = replicated); the mesh has three axes by default:

  data    pure data parallelism (parameters replicated)
  fsdp    data parallelism with parameters sharded along their "embed" axis (ZeRO-3 style)
  tensor  tensor parallelism over heads / MLP hidden units / vocabulary

Usage::

    mesh = make_mesh((1, 4, 2))
    with jax.set_mesh(mesh):
      model = init_sharded(lambda: Transformer(cfg, rngs=nnx.Rngs(0)), mesh)   # never materialised whole
      # or: model = shard_model(hf.from_pretrained(path)[0], mesh)
      loss = jax.jit(loss_fn)(nnx.state(model), shard_batch(batch, mesh))      # jax.jit is pjit

All mesh axes are `AxisType.Auto`: placing parameters and inputs is enough, XLA propagates shardings through
the jitted step. A mesh may span the devices of several processes (agent_rl.distributed): placing then transfers only
each process's own shards.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from agent_rl import distributed

AXES = ("data", "fsdp", "tensor")

DEFAULT_RULES: dict[str, Any] = {
    "batch": ("data", "fsdp"),
    "length": None,
    "layers": None,
    "vocab": "tensor",
    "embed": "fsdp",
    "mlp": "tensor",
    "heads": "tensor",
    "kv_heads": "tensor",
    "head_dim": None,
    "lora": None,  # adapter rank: small, replicated
}


def make_mesh(shape: Sequence[int], axis_names: Sequence[str] = AXES, devices=None) -> jax.sharding.Mesh:
  """A mesh of `shape` over the available devices (or `devices`), all axes AxisType.Auto."""
  shape, axis_names = tuple(int(s) for s in shape), tuple(axis_names)
  if len(shape) != len(axis_names):
    raise ValueError(f"mesh shape {shape} and axis_names {axis_names} differ in length")
  n = int(np.prod(shape))
  devices = jax.devices() if devices is None else list(devices)
  if n != len(devices):
    raise ValueError(f"mesh shape {shape} needs {n} devices, {len(devices)} available")
  return jax.make_mesh(shape, axis_names, axis_types=(AxisType.Auto,) * len(shape), devices=devices)


def logical_to_spec(names: Sequence[str | None], rules: Mapping[str, Any] | None = None,
                    mesh: jax.sharding.Mesh | None = None) -> PartitionSpec:
  """Logical axis names -> PartitionSpec. Mesh axes absent from `mesh` are dropped (so one rule table serves
  meshes that lack e.g. "data"); a mesh axis used twice in one spec is an error."""
  rules = DEFAULT_RULES if rules is None else rules
  spec, seen = [], set()
  for name in names:
    if name is not None and name not in rules:
      raise ValueError(f"logical axis {name!r} has no sharding rule; rules cover {sorted(rules)}")
    target = None if name is None else rules[name]
    axes = (target,) if isinstance(target, str) else tuple(target or ())
    if mesh is not None:
      axes = tuple(a for a in axes if a in mesh.axis_names)
    if seen & set(axes):
      raise ValueError(f"logical axes {tuple(names)} map mesh axis {sorted(seen & set(axes))} twice")
    seen |= set(axes)
    spec.append(None if not axes else axes[0] if len(axes) == 1 else axes)
  return PartitionSpec(*spec)


def axis_rules(rules: Mapping[str, Any] | None = None, mesh=None):
  """Context binding logical names to mesh axes for Flax (`nnx.logical_axis_rules`), restricted to the axes of
  `mesh` (default: the current mesh). Needed around `nnx.eval_shape` of the model under `jax.set_mesh`."""
  rules = DEFAULT_RULES if rules is None else rules
  if mesh is None:
    mesh = jax.sharding.get_abstract_mesh()
    mesh = mesh if mesh.axis_names else None
  return nnx.logical_axis_rules(tuple((name, logical_to_spec((name,), rules, mesh)[0]) for name in rules))


def _var_sharding(path, var, mesh, rules):
  names = var.get_metadata().get("out_sharding")
  shape = var.get_value().shape
  spec = PartitionSpec() if not names else logical_to_spec(names, rules, mesh)
  for dim, axes in zip(shape, spec):
    size = int(np.prod([mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes or ())]))
    if dim % size:
      where = ".".join(str(p) for p in path)
      raise ValueError(f"parameter {where} {tuple(shape)} with axes {names}: dimension {dim} does not divide "
                       f"over mesh axes {axes} of size {size}; change the mesh shape or the sharding rules")
  return NamedSharding(mesh, spec)


def named_shardings(state: nnx.State, mesh: jax.sharding.Mesh, rules: Mapping[str, Any] | None = None):
  """The NamedSharding of every Variable of `state` (same tree structure, Variables holding shardings)."""
  flat = [(path, var.replace(_var_sharding(path, var, mesh, rules))) for path, var in nnx.to_flat_state(state)]
  return nnx.from_flat_state(flat)


def shard_state(state: nnx.State, mesh: jax.sharding.Mesh, rules: Mapping[str, Any] | None = None) -> nnx.State:
  """Place every array of `state` on the mesh according to its logical axes."""
  return jax.tree.map(distributed.put, state, named_shardings(state, mesh, rules))


def shard_model(model: nnx.Module, mesh: jax.sharding.Mesh, rules: Mapping[str, Any] | None = None):
  """Move the model's parameters onto the mesh, in place; returns the model."""
  nnx.update(model, shard_state(nnx.state(model), mesh, rules))
  return model


def init_sharded(build: Callable[[], nnx.Module], mesh: jax.sharding.Mesh,
                 rules: Mapping[str, Any] | None = None) -> nnx.Module:
  """Build a module with every parameter created directly in its sharded layout (jit with out_shardings)."""
  with jax.set_mesh(mesh), axis_rules(rules, mesh):
    graphdef, abs_state = nnx.split(nnx.eval_shape(build))
    shardings = named_shardings(abs_state, mesh, rules)
    state = jax.jit(lambda: nnx.state(build()), out_shardings=shardings)()
  return nnx.merge(graphdef, state)


def batch_sharding(mesh: jax.sharding.Mesh, ndim: int, rules: Mapping[str, Any] | None = None) -> NamedSharding:
  """Sharding of an input array [batch, ...]: batch over the data-parallel axes, the rest replicated."""
  return NamedSharding(mesh, logical_to_spec(("batch",) + (None,) * (ndim - 1), rules, mesh))


def batch_shards(mesh: jax.sharding.Mesh, rules: Mapping[str, Any] | None = None) -> int:
  """How many ways a batch splits on `mesh`: the product of the sizes of the mesh axes "batch" maps to."""
  axes = logical_to_spec(("batch",), rules, mesh)[0]
  return int(np.prod([mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes or ())]))


def shard_batch(tree, mesh: jax.sharding.Mesh, rules: Mapping[str, Any] | None = None):
  """Place every array of a pytree with its leading axis as the batch axis. Every process passes the whole batch;
  on a mesh over several processes each transfers only its contiguous share of the rows."""
  return jax.tree.map(lambda x: distributed.put_rows(x, batch_sharding(mesh, np.ndim(x), rules)), tree)
