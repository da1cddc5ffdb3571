"""Per-device memory of a config's training on N devices, from compiled programs over abstract shapes.

    python launch/memory_plan.py --config configs/qwen2_5_7b.py --devices 64
    python launch/memory_plan.py --config configs/qwen2_5_1_5b.py:lora --devices 16 --device_memory v5p
    python launch/memory_plan.py --config configs/qwen2_5_7b.py --devices 16 --mesh 2,2,4 --config.model.remat=False

N fake CPU devices stand in for the accelerators (no weights, no tokenizer, no accelerator needed). The GRPO update
and the rollout are lowered and compiled on the config's mesh (`config.mesh.shape`; with another device count its
data axis is scaled, or `--mesh` gives the shape) and the table prints, per device: parameters, reference policy,
optimizer state, activations at the configured microbatch, KV cache, and the peak against the named device's memory
(`--device_memory`: h100 80 GB, v5p 95 GB, v5e 16 GB). `--json PATH` writes the numbers (bytes per device).
"""
import json
import math
import os
import re
import sys

from absl import flags

from agent_rl import cli

_CONFIG = cli.define_config_file("config", None, "ml_collections config file[:variant]; override fields with "
                                 "--config.<field>=value.")
_DEVICES = flags.DEFINE_integer("devices", None, "Devices to plan for (fake CPU devices); default: the config's mesh.")
_MESH = flags.DEFINE_list("mesh", None, "(data, fsdp, tensor) sizes, e.g. 2,8,1; default: the config's mesh, its "
                          "data axis scaled to --devices.")
_DEVICE_MEMORY = flags.DEFINE_enum("device_memory", "h100", ["h100", "v5p", "v5e"],
                                   "Device to compare against: h100 (80 GB), v5p (95 GB), v5e (16 GB).")
_JSON = flags.DEFINE_string("json", None, "Also write the plan (bytes per device) to this JSON file.")


def fake_cpu_devices(n: int) -> None:
    """Make jax (not yet imported) start with n host CPU devices, whatever accelerator this machine has.

    The programs are compiled for their memory analysis only and never run, so LLVM's optimisation of the CPU code is
    skipped (level 0): buffer sizes are the same and compiling takes about half the time."""
    if "jax" in sys.modules:
        raise RuntimeError("memory_plan: jax was imported before the device count could be set")
    xla = re.sub(r"--xla_force_host_platform_device_count=\S+", "", os.environ.get("XLA_FLAGS", "")).strip()
    if "--xla_backend_optimization_level" not in xla:
        xla += " --xla_backend_optimization_level=0"
    os.environ["XLA_FLAGS"] = f"{xla} --xla_force_host_platform_device_count={n}".strip()
    os.environ["JAX_PLATFORMS"] = "cpu"


def main(argv):
    del argv
    cfg = _CONFIG.value
    if cfg is None:
        cli.fail("memory_plan: --config is required (e.g. --config configs/qwen2_5_7b.py)")
    n = _DEVICES.value or math.prod(cfg.mesh.shape)
    if n < 1:
        cli.fail(f"memory_plan: --devices={n}: must be >= 1")
    if cli.unwritable(_JSON.value):
        cli.fail(f"memory_plan: --json={_JSON.value} {cli.unwritable(_JSON.value)}")
    fake_cpu_devices(n)
    from agent_rl import memory_plan, sharding

    try:
        shape = memory_plan.resolve_mesh_shape(cfg.mesh.shape, n, _MESH.value)
        mesh = sharding.make_mesh(shape, tuple(cfg.mesh.axes))
        plan = memory_plan.make_plan(cfg, mesh)
    except ValueError as e:  # a mesh that does not fit the devices or the model's dimensions; an unknown preset
        cli.fail(f"memory_plan: {e}")
    print(memory_plan.table(plan, _DEVICE_MEMORY.value), flush=True)
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            json.dump({**memory_plan.summary(plan), "device": _DEVICE_MEMORY.value,
                       "fits": plan.fits(_DEVICE_MEMORY.value)}, f, indent=2)


if __name__ == "__main__":
    cli.run(main)
