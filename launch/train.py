"""Train a policy: SFT warm start, then GRPO in the sandbox.

    python launch/train.py                                    # configs/tiny.py on the CPU, a few minutes
    python launch/train.py --config configs/tiny.py --config.grpo.steps 100 --config.workdir runs/exp1

Re-running the same command resumes from the last readable checkpoint in the workdir (with the same config, up to
steps, evaluation and checkpoint settings). Errors are one line on stderr and exit status 2; AGENT_RL_VERBOSE=1 or
--verbose shows the traceback.
"""
import os

from absl import logging

from agent_rl import cli

_CONFIG = cli.define_config_file(
    "config", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "tiny.py"),
    "ml_collections config file; override fields with --config.<field>=value.")


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint step at INFO
    from agent_rl import train

    train.train(_CONFIG.value)


if __name__ == "__main__":
    cli.run(main)
