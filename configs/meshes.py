"""Mesh presets: the (data, fsdp, tensor) shape for each Qwen2.5 size on a TPU v5p-32 slice and on two 8 x H100 nodes.

    from configs import meshes
    c.mesh.shape = meshes.shape("v5p_32", "7b")        # what configs/qwen2_5_7b.py:v5p_32 does

Both targets have 16 accelerators. A v5p-32 slice is 16 chips (32 TensorCores, two per chip, one JAX device per
chip) on 4 hosts, 95 GB of HBM each, every chip on one 3D-torus ICI. Two 8 x H100 nodes are 16 GPUs of 80 GB, NVLink
(~900 GB/s) inside a node and InfiniBand (~50 GB/s per GPU) between the two.

What decides the shapes (sharding rules: agent_rl/sharding.py; batch rows split over data x fsdp):
- A GRPO step is mostly rollout: hundreds of lockstep decode steps, each reading every weight once. Weights kept
  whole on a device (data) or split by heads and MLP units (tensor) are read from local memory; weights split over
  fsdp are gathered again at every decode step. So fsdp is the last resort, used only where memory needs it.
- Full fine-tuning holds ~20 bytes per parameter (float32 weights, reference copy, gradients, two AdamW moments):
  10 GB for 0.5B, 31 GB for 1.5B, 152 GB for 7B, before activations. Only 7B needs it split.
- Tensor parallelism must divide the kv heads (2 for 0.5B and 1.5B, 4 for 7B) and should stay on the fastest links:
  inside a node on GPUs (the last mesh axis varies fastest over the devices, so tensor groups are consecutive GPUs of
  one node); any 4 chips of the torus on v5p.
- Whatever crosses InfiniBand should be once per step, not per layer: data parallelism (one gradient all-reduce).
"""
from __future__ import annotations

MESHES = {
    "v5p_32": {
        # Replicated weights: every chip decodes its own rows from local HBM; states (<= 31 GB) fit a 95 GB chip.
        "0_5b": (16, 1, 1),
        "1_5b": (16, 1, 1),
        # 152 GB of states: tensor 4 (= the kv heads) puts 38 GB on a chip and keeps decode local; 4 replicas.
        "7b": (4, 1, 4),
    },
    "h100_2x8": {
        # As on v5p: only the gradient all-reduce crosses InfiniBand.
        "0_5b": (16, 1, 1),
        "1_5b": (16, 1, 1),
        # Tensor 4 inside a node over NVLink, fsdp 2 inside the node too (the weight gathers stay on NVLink), and
        # 2 replicas, one per node: 19 GB of states per GPU leaves room for activations in 80 GB.
        "7b": (2, 2, 4),
    },
}

DEVICES = {"v5p_32": 16, "h100_2x8": 16}


def shape(target: str, size: str) -> tuple[int, int, int]:
    """The (data, fsdp, tensor) shape for a model size ("0_5b", "1_5b", "7b") on a target ("v5p_32", "h100_2x8")."""
    if target not in MESHES or size not in MESHES[target]:
        raise ValueError(f"configs/meshes.py: no mesh for target {target!r} and size {size!r}; targets "
                         f"{sorted(MESHES)}, sizes {sorted(MESHES['v5p_32'])}")
    return MESHES[target][size]
