"""Train a policy: SFT warm start, then GRPO in the sandbox.

    python launch/train.py                                    # configs/tiny.py on the CPU, a few minutes
    python launch/train.py --config configs/tiny.py --config.grpo.steps 100 --config.workdir runs/exp1

Re-running the same command resumes from the last readable checkpoint in the workdir (with the same config, up to
steps, evaluation and checkpoint settings). Errors are one line on stderr and exit status 2; AGENT_RL_VERBOSE=1 or
--verbose shows the traceback.

Several processes (one per host; agent_rl.distributed): the same command on every host with --coordinator_address,
--num_processes and --process_id, or none of them on a TPU pod, under SLURM or Open MPI (detected). The mesh
(--config.mesh.shape) then spans every process's devices.
"""
import os

from absl import logging

from agent_rl import cli
from agent_rl import distributed

_CONFIG = cli.define_config_file(
    "config", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "tiny.py"),
    "ml_collections config file; override fields with --config.<field>=value.")
distributed.define_flags()


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint step at INFO
    distributed.initialize_from_flags()  # before any JAX computation; nothing on one machine outside a cluster
    from agent_rl import train

    train.train(_CONFIG.value)


if __name__ == "__main__":
    cli.run(main)
