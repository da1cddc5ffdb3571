"""Per-device memory of a config's training on a mesh, from compiled programs over abstract shapes: no weights are
read or allocated, no tokenizer is needed.

    plan = memory_plan.make_plan(cfg, mesh)          # inside a process with enough (fake CPU) devices
    print(memory_plan.table(plan, "h100"))

`make_plan` lowers and compiles the two programs that hold the most memory, with every input a
`jax.ShapeDtypeStruct` carrying its sharding:

  the GRPO update  `steps.grpo_update` on the rollout batch (grpo.n_scenarios * grpo.group_size rows of
                   shapes.prompt + env.max_tokens tokens, the widest a trimmed batch can be), with the config's
                   microbatch, remat and reference policy;
  the rollout      `rollout.sample_episodes` on the larger of the GRPO and evaluation batches, its KV cache sized
                   [layers, rows, kv_heads, shapes.prompt + env.max_tokens, head_dim].

Parameters, the reference policy and the optimizer state are counted from their shard shapes; activations and other
temporaries are XLA's `memory_analysis()` of the compiled programs; the KV cache is counted from its shape. The
programs are the CPU backend's: GPU and TPU compilers fuse and schedule differently, so temporaries are an estimate,
not a measurement on the accelerator.
"""
from __future__ import annotations

import dataclasses
import math
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from agent_rl import lora
from agent_rl import model as model_lib
from agent_rl import rollout
from agent_rl import setup as setup_lib
from agent_rl import sharding
from agent_rl import steps
from agent_rl import tokenizer as tok_lib

GB = 1e9  # decimal, as accelerator memory is quoted
DEVICE_MEMORY_GB = {"h100": 80.0, "v5p": 95.0, "v5e": 16.0}
DEVICE_NAMES = {"h100": "NVIDIA H100", "v5p": "TPU v5p", "v5e": "TPU v5e"}
HEADROOM = 0.9  # a plan fits when its peak is within 90% of the device: the runtime and fragmentation take the rest


@dataclasses.dataclass(frozen=True)
class Plan:
  """Bytes per device (ints) and the shapes they came from."""
  model: str
  n_params: int
  n_trained: int
  lora_rank: int
  remat: bool
  dtype: str
  param_dtype: str
  mesh: dict[str, int]
  n_devices: int
  params: int             # the trained parameters (LoRA: the adapters)
  frozen: int             # LoRA's frozen base weights (0 for full fine-tuning)
  reference: int          # the reference policy's copy of the trained parameters (the KL term's)
  optimizer: int          # AdamW's moments and counters
  update_batch: int       # the GRPO update's other inputs: the trajectory batch and its advantages
  update_temp: int        # XLA temporaries of the GRPO update: activations at the microbatch, gradients, logits
  update_out: int         # outputs not written in place of a donated input
  rollout_inputs: int     # the rollout's inputs other than parameters: scenarios, byte table
  rollout_temp: int       # XLA temporaries of the rollout, the KV cache included
  rollout_out: int        # the trajectory it returns
  kv_cache: int           # the KV cache, counted from its shape and sharding
  update_rows: dict[str, int]   # batch, microbatch, sequence, microbatch rows per device
  rollout_rows: dict[str, int]  # batch, prompt, new tokens, rows per device
  compile_s: dict[str, float]
  warnings: tuple[str, ...] = ()

  @property
  def resident(self) -> int:
    """Held through the whole GRPO step: parameters, frozen base, reference and optimizer state."""
    return self.params + self.frozen + self.reference + self.optimizer

  @property
  def peak_update(self) -> int:
    return self.resident + self.update_batch + self.update_temp + self.update_out

  @property
  def peak_rollout(self) -> int:
    return self.resident + self.rollout_inputs + self.rollout_temp + self.rollout_out

  @property
  def peak(self) -> int:
    return max(self.peak_update, self.peak_rollout)

  def fits(self, device: str) -> bool:
    return self.peak <= HEADROOM * DEVICE_MEMORY_GB[device] * GB

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d.update(resident=self.resident, peak_update=self.peak_update, peak_rollout=self.peak_rollout, peak=self.peak)
    return d


def model_config(cfg) -> model_lib.ModelConfig:
  """The model the config trains, without reading weights or a tokenizer when it can: config.model.hf_dir's
  config.json if that exists, else the preset with config.model's overrides and the tokenizer's vocabulary size
  (for kind "hf" the preset's own, which is the model's)."""
  if _has_weights(cfg):
    return setup_lib.build_model_config(cfg)
  kind = cfg.tokenizer.kind
  vocab = {"hf": model_lib.preset(cfg.model.preset).vocab_size, "builtin": cfg.tokenizer.vocab_size,
           "byte": tok_lib.ByteTokenizer().vocab_size}.get(kind)
  if vocab is None:
    raise ValueError(f"config.tokenizer.kind={kind!r}: expected 'builtin', 'hf' or 'byte'")
  cfg = cfg.copy_and_resolve_references()
  with cfg.unlocked():
    cfg.model.hf_dir = ""
  return setup_lib.build_model_config(cfg, vocab)


def _has_weights(cfg) -> bool:
  hf_dir = cfg.model.hf_dir
  return bool(hf_dir) and (pathlib.Path(hf_dir).expanduser() / "config.json").is_file()


def _abstract(tree, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def abstract_model(model_cfg: model_lib.ModelConfig, mesh) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
  """(graphdef, trainable, frozen) as in `lora.split`, every leaf a ShapeDtypeStruct with its NamedSharding."""
  with jax.set_mesh(mesh), sharding.axis_rules(None, mesh):
    model = nnx.eval_shape(lambda: model_lib.Transformer(model_cfg, rngs=nnx.Rngs(0)))
  graphdef, trainable, frozen = lora.split(model)
  place = lambda s: _abstract(s, sharding.named_shardings(s, mesh)) if len(s) else s  # noqa: E731
  return graphdef, place(trainable), place(frozen)


def abstract_optimizer(tx, params, mesh):
  """tx.init(params) as ShapeDtypeStructs: every leaf that mirrors a parameter (Adam's moments) shares its
  sharding, as `tx.init` on placed arrays gives (zeros_like keeps the sharding); the rest (counters) replicated."""
  state = jax.eval_shape(tx.init, params)
  by_path = {tuple(path): x.sharding for path, x in jax.tree_util.tree_flatten_with_path(params)[0]}
  replicated = NamedSharding(mesh, PartitionSpec())

  def place(path, x):
    shard = next((by_path[tuple(path[i:])] for i in range(len(path)) if tuple(path[i:]) in by_path), replicated)
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=shard)

  return jax.tree_util.tree_map_with_path(place, state)


def device_bytes(tree) -> int:
  """Bytes one device holds of a tree of sharded ShapeDtypeStructs (the largest shard, so uneven splits count)."""
  return int(sum(math.prod(x.sharding.shard_shape(x.shape)) * jnp.dtype(x.dtype).itemsize
                 for x in jax.tree.leaves(tree)))


def rows_per_device(rows: int, mesh) -> int:
  """Rows each device computes: its share when they split over the batch axes, else all of them (replicated)."""
  ways = sharding.batch_shards(mesh)
  return rows // ways if rows % ways == 0 else rows


def _batched(mesh, shape, dtype, warnings: list[str], what: str) -> jax.ShapeDtypeStruct:
  """[rows, ...] split over the batch axes, or replicated (with a warning) when the rows do not divide."""
  ways = sharding.batch_shards(mesh)
  if shape[0] % ways:
    msg = f"{what}: {shape[0]} rows do not split {ways} ways; placed replicated"
    if msg not in warnings:
      warnings.append(msg)
    return jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, PartitionSpec()))
  return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding.batch_sharding(mesh, len(shape)))


def _timed_compile(lower) -> tuple[Any, float]:
  t0 = time.perf_counter()
  compiled = lower().compile()
  return compiled, time.perf_counter() - t0


def compile_update(cfg, graphdef, params, frozen, mesh, warnings: list[str]):
  """The compiled GRPO update on the rollout batch; returns (compiled, optimizer state, rows description)."""
  g = cfg.grpo
  schedule = steps.lr_schedule(g.lr, g.warmup, g.steps, steps.grpo_updates_per_step(g))
  tx = steps.make_optimizer(schedule, 0.0, g.max_grad_norm)
  opt_state = abstract_optimizer(tx, params, mesh)
  n, s = g.n_scenarios * g.group_size, cfg.shapes.prompt + cfg.env.max_tokens
  row = lambda dtype: _batched(mesh, (n, s), dtype, warnings, "GRPO batch")  # noqa: E731
  traj = rollout.Trajectory(row(jnp.int32), row(jnp.bool_), row(jnp.bool_), row(jnp.float32), None)
  adv = _batched(mesh, (n,), jnp.float32, warnings, "GRPO batch")
  key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=NamedSharding(mesh, PartitionSpec()))
  if g.microbatch % sharding.batch_shards(mesh):
    warnings.append(f"grpo.microbatch={g.microbatch} does not split {sharding.batch_shards(mesh)} ways: every device "
                    "computes every row of a microbatch")
  hp = steps.GrpoHP.from_config(g)
  with jax.set_mesh(mesh):
    compiled, seconds = _timed_compile(lambda: steps.grpo_update.lower(
        graphdef, params, opt_state, params, traj, adv, key, frozen, tx=tx, hp=hp))
  rows = dict(batch=n, microbatch=g.microbatch, sequence=s, rows_per_device=rows_per_device(g.microbatch, mesh))
  return compiled, opt_state, rows, seconds


def abstract_scenarios(cfg, rows: int, mesh, warnings: list[str]):
  """A batch of `rows` scenarios as ShapeDtypeStructs at the config's shapes. The field shapes come from compiling
  one generated scenario with the byte tokenizer at shapes roomy enough for its byte-level prompt; only the prompt,
  segment and script lengths depend on the tokenizer, and those are set to the config's."""
  from sandbox import catalogue
  from sandbox import compile as compile_lib
  from sandbox import generate
  from sandbox import types as T

  shapes = T.Shapes(**dict(cfg.shapes))
  roomy = shapes._replace(prompt=1 << 14, seg=1 << 13, script=1 << 13)
  one = compile_lib.compile_specs(generate.generate(cfg.data.seed, "train", 1), tok_lib.ByteTokenizer(),
                                  catalogue.CATALOGUE, shapes=roomy, prompt_style=cfg.data.tool_style)
  batched = lambda x, tail=None: _batched(mesh, (rows, *(x.shape[1:] if tail is None else tail)), x.dtype,  # noqa
                                          warnings, "rollout batch")
  return jax.tree.map(batched, one).replace(
      prompt=batched(one.prompt, (shapes.prompt,)), seg=batched(one.seg, (*one.seg.shape[1:-1], shapes.seg)),
      script=batched(one.script, (*one.script.shape[1:-1], shapes.script)), shapes=shapes)


def compile_rollout(cfg, model_cfg, graphdef, params, mesh, warnings: list[str]):
  """The compiled model rollout on the larger of the GRPO and evaluation batches; returns (compiled, rows)."""
  from sandbox import token_table
  from sandbox import types as T

  rows = max(cfg.grpo.n_scenarios * cfg.grpo.group_size, cfg.eval.batch_size)
  scenario = abstract_scenarios(cfg, rows, mesh, warnings)
  replicated = NamedSharding(mesh, PartitionSpec())
  scalar = jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated)
  # The byte table: one row per token id; 16 bytes a row stands in for the tokenizer's longest token (a few MB).
  # Its token table (`sandbox.token_table`): the class count stands in likewise; the control states are exact.
  n_states = len(token_table.control_automaton()[0])
  i32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=replicated)  # noqa: E731
  tokens = token_table.TokenTable(cls=i32(model_cfg.vocab_size), trans=i32(64, n_states), fields=i32(n_states, 6),
                                  index=i32(200_000), strides=i32(6))
  vocab = T.Vocab(jax.ShapeDtypeStruct((model_cfg.vocab_size, 16), jnp.uint8, sharding=replicated),
                  i32(model_cfg.vocab_size), scalar, scalar, tokens)
  key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=replicated)
  env_params = T.EnvParams(**dict(cfg.env))
  new_tokens = int(cfg.env.max_tokens)
  with jax.set_mesh(mesh):
    compiled, seconds = _timed_compile(lambda: rollout.sample_episodes.lower(
        graphdef, params, scenario, vocab, key, env_params, jnp.float32(cfg.grpo.temperature),
        max_new_tokens=new_tokens))
  return compiled, dict(batch=rows, prompt=cfg.shapes.prompt, new_tokens=new_tokens,
                        rows_per_device=rows_per_device(rows, mesh)), seconds


def kv_cache_bytes(model_cfg: model_lib.ModelConfig, rows: int, slots: int, mesh) -> int:
  """Per device: k and v [layers, rows, kv_heads, slots, head_dim] in the compute dtype, rows split over the batch
  axes and kv heads over "tensor" where they divide (as XLA places the cache the rollout creates)."""
  tensor = mesh.shape.get("tensor", 1)
  rows = rows_per_device(rows, mesh)
  heads = model_cfg.n_kv_heads // tensor if model_cfg.n_kv_heads % tensor == 0 else model_cfg.n_kv_heads
  return 2 * model_cfg.n_layers * rows * heads * slots * model_cfg.head_dim * model_cfg.compute_dtype.itemsize


def make_plan(cfg, mesh) -> Plan:
  """Compile the GRPO update and the rollout of `cfg` on `mesh` (abstract inputs) and count their memory."""
  warnings: list[str] = []
  model_cfg = model_config(cfg)
  graphdef, params, frozen = abstract_model(model_cfg, mesh)
  update, opt_state, update_rows, t_update = compile_update(cfg, graphdef, params, frozen, mesh, warnings)
  full = lora.full_state(params, frozen)
  roll, rollout_rows, t_rollout = compile_rollout(cfg, model_cfg, graphdef, full, mesh, warnings)
  u, r = update.memory_analysis(), roll.memory_analysis()
  p, f, o = device_bytes(params), device_bytes(frozen), device_bytes(opt_state)
  return Plan(
      model=str(cfg.model.hf_dir) if _has_weights(cfg) else cfg.model.preset, n_params=model_cfg.n_params,
      n_trained=model_cfg.n_lora_params if model_cfg.lora_rank else model_cfg.n_params,
      lora_rank=model_cfg.lora_rank, remat=model_cfg.remat, dtype=model_cfg.dtype, param_dtype=model_cfg.param_dtype,
      mesh={k: int(v) for k, v in mesh.shape.items()}, n_devices=mesh.size, params=p, frozen=f, reference=p,
      optimizer=o, update_batch=max(u.argument_size_in_bytes - (2 * p + f + o), 0), update_temp=u.temp_size_in_bytes,
      update_out=max(u.output_size_in_bytes - u.alias_size_in_bytes, 0),
      rollout_inputs=max(r.argument_size_in_bytes - (p + f), 0), rollout_temp=r.temp_size_in_bytes,
      rollout_out=r.output_size_in_bytes,
      kv_cache=kv_cache_bytes(model_cfg, rollout_rows["batch"], rollout_rows["prompt"] + rollout_rows["new_tokens"],
                              mesh),
      update_rows=update_rows, rollout_rows=rollout_rows,
      compile_s={"grpo_update": round(t_update, 1), "rollout": round(t_rollout, 1)}, warnings=tuple(warnings))


def table(plan: Plan, device: str) -> str:
  """The plan as a fixed-width table, GB (1e9 bytes) per device, against `device`'s memory."""
  gb = lambda b: f"{b / GB:9.2f}"  # noqa: E731
  count = lambda n: f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"  # noqa: E731
  what = (f"LoRA rank {plan.lora_rank}, {count(plan.n_trained)} of {count(plan.n_params)} parameters trained"
          if plan.lora_rank else f"full fine-tuning of {count(plan.n_params)} parameters")
  mesh = ", ".join(f"{k} {v}" for k, v in plan.mesh.items())
  u, r = plan.update_rows, plan.rollout_rows
  capacity = DEVICE_MEMORY_GB[device]
  lines = [
      f"{plan.model}: {what}; compute {plan.dtype}, parameters {plan.param_dtype}, "
      f"remat {'on' if plan.remat else 'off'}",
      f"mesh ({mesh}) on {plan.n_devices} devices",
      f"GRPO update: {u['batch']} rows x {u['sequence']} tokens, microbatch {u['microbatch']} "
      f"({u['rows_per_device']} rows per device); rollout: {r['batch']} rows x {r['prompt']} + {r['new_tokens']} "
      f"tokens ({r['rows_per_device']} rows per device)",
      "",
      f"{'per device':<44}{'GB':>9}",
      f"{'parameters (trained)':<44}{gb(plan.params)}",
      f"{'parameters (frozen LoRA base)':<44}{gb(plan.frozen)}",
      f"{'reference policy':<44}{gb(plan.reference)}",
      f"{'optimizer state (AdamW)':<44}{gb(plan.optimizer)}",
      f"{'GRPO update: batch':<44}{gb(plan.update_batch)}",
      f"{'GRPO update: activations and temporaries':<44}{gb(plan.update_temp + plan.update_out)}",
      f"{'rollout: KV cache':<44}{gb(plan.kv_cache)}",
      f"{'rollout: other temporaries and inputs':<44}"
      f"{gb(plan.rollout_temp - plan.kv_cache + plan.rollout_inputs + plan.rollout_out)}",
      f"{'peak in the GRPO update':<44}{gb(plan.peak_update)}",
      f"{'peak in the rollout':<44}{gb(plan.peak_rollout)}",
      f"{'peak':<44}{gb(plan.peak)}",
      f"{DEVICE_NAMES[device] + ' memory':<44}{capacity:9.2f}",
      f"fits: {'yes' if plan.fits(device) else 'no'} ({plan.peak / GB / capacity:.0%} of {capacity:g} GB; "
      f"a plan fits within {HEADROOM:.0%})",
      f"compile: GRPO update {plan.compile_s['grpo_update']:.1f} s, rollout {plan.compile_s['rollout']:.1f} s "
      "(CPU backend)",
  ]
  lines += [f"warning: {w}" for w in plan.warnings]
  return "\n".join(lines)


def resolve_mesh_shape(config_shape, n_devices: int, override=None) -> tuple[int, ...]:
  """The (data, fsdp, tensor) shape to plan on: `override` if given; the config's if it has `n_devices` devices;
  else the config's with the data axis scaled to use `n_devices` (more replicas of the same per-device layout)."""
  if override is not None:
    shape = tuple(int(s) for s in override)
  else:
    shape = tuple(int(s) for s in config_shape)
    if math.prod(shape) != n_devices:
      rest = math.prod(shape[1:])
      if n_devices % rest:
        raise ValueError(f"mesh {shape} cannot be scaled to {n_devices} devices (its fsdp x tensor = {rest} does not "
                         f"divide it); pass --mesh")
      shape = (n_devices // rest, *shape[1:])
  if math.prod(shape) != n_devices:
    raise ValueError(f"mesh {shape} has {math.prod(shape)} devices, not {n_devices}")
  return shape


def summary(plan: Plan) -> dict[str, Any]:
  """The plan as plain numbers (bytes per device), for JSON."""
  return {k: (list(v) if isinstance(v, tuple) else v) for k, v in plan.to_dict().items()}
