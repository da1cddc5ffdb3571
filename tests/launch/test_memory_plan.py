"""launch/memory_plan.py on a small model and 4 fake devices: parameter bytes per device equal a count by hand from the
shapes. The Qwen2.5 presets: every variant loads and its mesh divides the model and the batches. The batch-row
constraint of agent_rl.model keeps activations split over the data axes."""
import json
import math
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from agent_rl import model as model_lib
from agent_rl import run_config
from configs import meshes
from configs import qwen2_5

ROOT = pathlib.Path(__file__).resolve().parents[2]


def run(args, tmp_path, timeout=300, env=None):
    env = {**os.environ, **(env or {}), "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=tmp_path,
                         env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_parameter_bytes_equal_a_hand_count(tmp_path):
    # configs/micro.py's model: tiny preset (q/k/v biases, tied embeddings), vocab 512 (its tokenizer's), d 32,
    # 2 layers, 2 heads, 1 kv head of 16, MLP 64; mesh (data 2, fsdp 2, tensor 1).
    stdout = run([str(ROOT / "launch" / "memory_plan.py"), "--config", str(ROOT / "configs" / "micro.py"),
                  "--devices=4", "--mesh=2,2,1", "--device_memory=v5e", "--json=plan.json"], tmp_path)
    plan = json.loads((tmp_path / "plan.json").read_text())
    v, d, layers, h, kv, hd, f = 512, 32, 2, 2, 1, 16, 64
    # Every weight with an "embed" axis is split over fsdp (2); the q/k/v biases have none and are replicated.
    with_embed = v * d + layers * (d * h * hd + 2 * d * kv * hd + h * hd * d + 3 * d * f + 2 * d) + d
    biases = layers * (h + 2 * kv) * hd
    assert with_embed + biases == plan["n_params"] == 35_104
    assert plan["params"] == 4 * (with_embed // 2 + biases) == 70_464  # float32
    assert plan["reference"] == plan["params"] and plan["frozen"] == 0
    assert 2 * plan["params"] <= plan["optimizer"] <= 2 * plan["params"] + 64  # AdamW's two moments and counters
    # KV cache: [layers, rollout rows / 4 ways, kv heads, prompt + new tokens, head_dim] x 2 (k, v) x float32; the
    # 22 evaluation rows do not split 4 ways, so every device holds them all (and the plan says so).
    assert plan["kv_cache"] == 2 * layers * 22 * kv * (512 + 96) * hd * 4
    assert any("22 rows do not split 4 ways" in w for w in plan["warnings"])
    assert plan["update_temp"] > 0 and plan["rollout_temp"] >= plan["kv_cache"]
    assert plan["peak"] == max(plan["peak_update"], plan["peak_rollout"]) >= plan["resident"]
    assert plan["fits"] is True and "fits: yes" in stdout and "optimizer state (AdamW)" in stdout


SIZES = {"0_5b": model_lib.qwen2_5_0_5b(), "1_5b": model_lib.qwen2_5_1_5b(), "7b": model_lib.qwen2_5_7b()}


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("variant", ["", "lora", "v5p_32", "h100_2x8", "lora,h100_2x8"])
def test_qwen_presets_divide_over_their_mesh(size, variant):
    c = __import__(f"configs.qwen2_5_{size}", fromlist=["get_config"]).get_config(variant)
    m, mesh = SIZES[size], dict(zip(c.mesh.axes, c.mesh.shape))
    assert c.model.preset == f"qwen2_5_{size}" and (c.model.lora_rank > 0) == ("lora" in variant)
    assert math.prod(c.mesh.shape) == 16
    rows = mesh["data"] * mesh["fsdp"]  # batch rows split over data x fsdp
    for n in (c.grpo.n_scenarios * c.grpo.group_size, c.grpo.minibatch_size, c.grpo.microbatch, c.sft.batch_size,
              c.sft.microbatch, c.eval.batch_size, c.data.n_heldout, c.data.n_iid):
        assert n % rows == 0, (n, rows)
    for dim in (m.n_heads, m.n_kv_heads, m.mlp_dim, m.vocab_size):  # split over tensor
        assert dim % mesh["tensor"] == 0
    assert m.d_model % mesh["fsdp"] == 0
    # Valid but for what this machine lacks: the weights directory and 16 devices.
    with pytest.raises(run_config.ConfigError) as e:
        run_config.validate(c)
    assert {line.split("=")[0] for line in str(e.value).splitlines()} <= {"config.model.hf_dir", "config.mesh.shape"}


def test_unknown_variants_are_errors():
    for variant in ("big", "v5p_32,h100_2x8"):
        with pytest.raises(ValueError, match="variant"):
            qwen2_5.get_config("7b", variant)
    with pytest.raises(ValueError, match="no mesh"):
        meshes.shape("v5e_8", "7b")


SHARD_ROWS = textwrap.dedent("""
  import jax, jax.numpy as jnp
  from flax import nnx
  from jax.sharding import NamedSharding, PartitionSpec as P
  from agent_rl import memory_plan, model as M, sharding as S
  cfg = M.tiny(vocab_size=64, d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, head_dim=16, mlp_dim=64)
  mesh = S.make_mesh((1, 4, 1))
  graphdef, state, _ = memory_plan.abstract_model(cfg, mesh)  # weights split over fsdp on "embed"
  rows = lambda dtype: jax.ShapeDtypeStruct((8, 16), dtype, sharding=NamedSharding(mesh, P()))  # replicated
  logits = lambda state, tokens, valid: M.forward(nnx.merge(graphdef, state), tokens, valid)
  with jax.set_mesh(mesh):  # only the model's constraint can split the rows of the output
    out = jax.jit(logits).lower(state, rows(jnp.int32), rows(bool)).compile().output_shardings
  print("SPEC", (*out.spec, None)[0])  # the rows axis (None: replicated)
""")


def test_activations_split_over_the_batch_axes(tmp_path):
    stdout = run(["-c", SHARD_ROWS], tmp_path,
                 env={"XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"})
    assert "SPEC fsdp" in stdout


@pytest.mark.slow
def test_qwen2_5_7b_on_64_devices(tmp_path):
    stdout = run([str(ROOT / "launch" / "memory_plan.py"), "--config", str(ROOT / "configs" / "qwen2_5_7b.py"),
                  "--devices", "64", "--json=plan.json"], tmp_path, timeout=900)
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["n_devices"] == 64 and plan["mesh"] == {"data": 16, "fsdp": 1, "tensor": 4}
    assert plan["n_params"] == model_lib.qwen2_5_7b().n_params
    assert "peak" in stdout and plan["fits"] is True
