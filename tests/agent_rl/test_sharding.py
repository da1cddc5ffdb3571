"""A (data, fsdp, tensor) = (2, 2, 2) mesh of 8 host devices computes the same loss and gradients as one device.

The device count flag must be set before jax is imported, so the multi-device part runs in a fresh interpreter.
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest
from jax.sharding import PartitionSpec as P

from agent_rl import sharding

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SCRIPT = textwrap.dedent("""
  import json, sys, tempfile
  import jax, jax.numpy as jnp, numpy as np
  from flax import nnx
  from agent_rl import hf, model as M, sharding as S

  assert jax.device_count() == 8, jax.devices()
  cfg = M.tiny(vocab_size=512, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, mlp_dim=128,
               tie_embeddings=False)
  build = lambda: M.Transformer(cfg, rngs=nnx.Rngs(0))
  model = build()
  graphdef, state = nnx.split(model)
  key1, key2 = jax.random.split(jax.random.key(1))
  tokens = jax.random.randint(key1, (8, 16), 0, cfg.vocab_size, jnp.int32)
  valid = jnp.arange(16)[None] >= jax.random.randint(key2, (8, 1), 0, 8)

  def loss_fn(state, tokens, valid):
    logits = M.forward(nnx.merge(graphdef, state), tokens, valid)
    logp = jnp.take_along_axis(jax.nn.log_softmax(logits[:, :-1]), tokens[:, 1:, None], -1)[..., 0]
    mask = valid[:, 1:] & valid[:, :-1]
    return -jnp.sum(logp * mask) / jnp.sum(mask)

  step = jax.jit(jax.value_and_grad(loss_fn))
  loss1, grads1 = step(state, tokens, valid)

  mesh = S.make_mesh((2, 2, 2))
  out = {}
  with jax.set_mesh(mesh):
    sharded = S.shard_state(state, mesh)
    loss8, grads8 = step(sharded, *S.shard_batch((tokens, valid), mesh))
    out["loss_diff"] = float(abs(loss1 - loss8))
    out["grad_diff"] = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(grads1),
                                                                           jax.tree.leaves(grads8)))
    out["grad_scale"] = max(float(jnp.max(jnp.abs(a))) for a in jax.tree.leaves(grads1))
    out["embed_spec"] = str(sharded["embed"].get_value().sharding.spec)
    out["q_spec"] = str(sharded["blocks"]["attn"]["q"].get_value().sharding.spec)
    out["embed_shard_shape"] = list(sharded["embed"].get_value().addressable_shards[0].data.shape)
    out["grad_q_devices"] = len(grads8["blocks"]["attn"]["q"].get_value().sharding.device_set)

  if sys.argv[-1] == "extras":  # direct sharded init; sharded load of an exported checkpoint
    with jax.set_mesh(mesh):
      direct = S.init_sharded(build, mesh)
      out["init_sharded_diff"] = max(float(jnp.max(jnp.abs(a - b))) for a, b in
                                     zip(jax.tree.leaves(nnx.state(direct)), jax.tree.leaves(state)))
      out["init_sharded_spec"] = str(direct.blocks.mlp.down.get_value().sharding.spec)
      with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(model, cfg, d)
        loaded, _ = hf.from_pretrained(d, mesh=mesh)
        out["hf_loaded_spec"] = str(loaded.blocks.mlp.gate.get_value().sharding.spec)
        loss_hf, _ = step(nnx.state(loaded), *S.shard_batch((tokens, valid), mesh))
        out["hf_loss_diff"] = float(abs(loss_hf - loss1))

  try:
    S.shard_state(state, S.make_mesh((1, 1, 8)))
  except ValueError as e:
    out["indivisible_error"] = str(e)
  print("RESULT" + json.dumps(out))
""")


def run_script(*args):
  xla = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8".strip()
  env = {**os.environ, "XLA_FLAGS": xla, "JAX_PLATFORMS": "cpu",
         "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
  proc = subprocess.run([sys.executable, "-c", SCRIPT, *args], env=env, cwd=ROOT, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-4000:]
  line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT")][-1]
  return json.loads(line[len("RESULT"):])


@pytest.fixture(scope="module")
def result():
  return run_script()


def test_mesh_matches_single_device(result):
  assert result["loss_diff"] < 1e-5
  assert result["grad_diff"] < 1e-5, result
  assert result["grad_scale"] > 1e-3  # gradients are not trivially zero


def test_parameters_are_really_sharded(result):
  assert result["embed_spec"] == str(P("tensor", "fsdp"))
  assert result["q_spec"] == str(P(None, "fsdp", "tensor", None))
  assert result["embed_shard_shape"] == [256, 32]  # [512, 64] over tensor=2, fsdp=2
  assert result["grad_q_devices"] == 8


@pytest.mark.slow
def test_init_sharded_and_sharded_hf_load():
  result = run_script("extras")
  assert result["init_sharded_diff"] < 1e-7  # jit may fuse the init differently: ulps, not other numbers
  assert result["init_sharded_spec"] == str(P(None, "tensor", "fsdp"))
  assert result["hf_loaded_spec"] == str(P(None, "fsdp", "tensor"))
  assert result["hf_loss_diff"] < 1e-5


def test_indivisible_dimension_is_one_clear_error(result):
  assert "dimension 2 does not divide over mesh axes tensor of size 8" in result["indivisible_error"]


def test_logical_to_spec_rules():
  assert sharding.logical_to_spec(("layers", "embed", "mlp")) == P(None, "fsdp", "tensor")
  assert sharding.logical_to_spec(("batch", None)) == P(("data", "fsdp"), None)
  assert sharding.logical_to_spec(("embed", "mlp"), {"embed": None, "mlp": ("fsdp", "tensor")}) == \
      P(None, ("fsdp", "tensor"))
  with pytest.raises(ValueError, match="logical axis 'experts' has no sharding rule"):
    sharding.logical_to_spec(("experts",))
  with pytest.raises(ValueError, match="twice"):
    sharding.logical_to_spec(("embed", "mlp"), {"embed": "fsdp", "mlp": "fsdp"})
