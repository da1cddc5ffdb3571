"""launch/tpu_pod.sh and launch/slurm.sbatch: their dry runs print complete commands, read back as argument lists."""
import pathlib
import shlex
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
TPU = ROOT / "launch" / "tpu_pod.sh"
SLURM = ROOT / "launch" / "slurm.sbatch"
CLEAN = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"}  # no TPU_* or SLURM_* variables from the caller


def dry_run(script, *args, env=None):
    """The commands a dry run prints, each split as bash would read it; runs from another directory."""
    out = subprocess.run(["bash", str(script), *args], capture_output=True, text=True, timeout=30, cwd="/",
                         env={**CLEAN, **(env or {})})
    assert out.returncode == 0, out.stderr
    return [shlex.split(line) for line in out.stdout.splitlines()]


def option(argv, name):
    """The value of --name=value in an argument list (None if absent)."""
    return next((a.split("=", 1)[1] for a in argv if a.startswith(f"--{name}=")), None)


def test_scripts_parse():
    for script in (TPU, SLURM):
        subprocess.run(["bash", "-n", str(script)], check=True)


def test_tpu_create_and_delete():
    [create] = dry_run(TPU, "--dry-run", "create", "--name", "q7", "--project", "proj", "--spot")
    assert create == ["gcloud", "compute", "tpus", "tpu-vm", "create", "q7", "--zone=us-east5-a", "--project=proj",
                      "--accelerator-type=v5p-32", "--version=v2-alpha-tpuv5", "--spot"]
    [delete] = dry_run(TPU, "delete", "--dry-run", "--name", "q7", "--zone", "us-central1-a")
    assert delete == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "q7", "--zone=us-central1-a", "--quiet"]


def test_tpu_install_on_every_worker():
    archive, scp, install, weights = dry_run(TPU, "--dry-run", "install", "--name", "q7",
                                             "--weights", "Qwen/Qwen2.5-7B-Instruct", env={"TMPDIR": "/tmp"})
    assert archive == ["git", "archive", "--format=tar.gz", "--output=/tmp/agent_rl-q7.tar.gz", "HEAD"]
    assert scp == ["gcloud", "compute", "tpus", "tpu-vm", "scp", "/tmp/agent_rl-q7.tar.gz", "q7:agent_rl.tar.gz",
                   "--zone=us-east5-a", "--worker=all"]
    for ssh in (install, weights):
        assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "q7"] and "--worker=all" in ssh
    remote = shlex.split(option(install, "command"))
    assert "uv==0.13.8" in remote and "3.11" in remote
    assert "s/^jax\\[cpu\\]==/jax[tpu]==/" in remote  # the TPU build of the pinned jax
    assert " ".join(remote).endswith("uv pip install --python $HOME/agent_rl_venv/bin/python -r requirements-tpu.txt")
    assert "snapshot_download('Qwen/Qwen2.5-7B-Instruct', local_dir='models/Qwen2.5-7B-Instruct')" in \
        option(weights, "command")


def test_tpu_run_trains_the_config_on_every_worker():
    [run] = dry_run(TPU, "--dry-run", "run", "--name", "q7", "--config", "configs/qwen2_5_7b.py:lora,v5p_32",
                    "--", "--config.grpo.steps=10", "--config.workdir_note=a b")
    assert run[:7] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "q7", "--zone=us-east5-a"]
    assert "--worker=all" in run
    remote = shlex.split(option(run, "command"))
    assert remote == ["cd", "agent_rl", "&&", "$HOME/agent_rl_venv/bin/python", "launch/train.py", "--config",
                      "configs/qwen2_5_7b.py:lora,v5p_32", "--config.workdir=runs/q7", "--config.grpo.steps=10",
                      "--config.workdir_note=a b"]


def test_tpu_copy_fetches_the_workdir_from_worker_0():
    mkdir, scp = dry_run(TPU, "copy", "--name", "q7", "--workdir", "runs/exp1", "--dry-run")
    assert mkdir == ["mkdir", "-p", "runs"]
    assert scp == ["gcloud", "compute", "tpus", "tpu-vm", "scp", "--recurse", "q7:agent_rl/runs/exp1", "runs/",
                   "--zone=us-east5-a", "--worker=0"]


@pytest.mark.parametrize("args", [[], ["--dry-run", "reboot"], ["--dry-run", "run", "--name"],
                                  ["--dry-run", "run", "delete"]])
def test_tpu_bad_arguments_fail_with_status_2(args):
    out = subprocess.run(["bash", str(TPU), *args], capture_output=True, text=True, timeout=30, env=CLEAN)
    assert out.returncode == 2 and out.stdout == ""


def test_slurm_one_process_per_gpu():
    export, install, srun = dry_run(SLURM, "--dry-run", "--install", "configs/qwen2_5_7b.py:h100_2x8",
                                    "--config.workdir=runs/q7")
    assert export == ["export", "XLA_PYTHON_CLIENT_MEM_FRACTION=0.92"]
    jax_pin = next(line for line in (ROOT / "requirements.txt").read_text().splitlines() if line.startswith("jax["))
    assert install == ["python3", "-m", "pip", "install", "-r", "requirements.txt",
                       jax_pin.replace("jax[cpu]", "jax[cuda12]")]
    assert srun == ["srun", "--nodes=2", "--ntasks-per-node=8", "--cpus-per-task=8", "--gpu-bind=none",
                    "--kill-on-bad-exit=1", "python3", "launch/train.py", "--config",
                    "configs/qwen2_5_7b.py:h100_2x8", "--config.workdir=runs/q7"]


def test_slurm_one_process_per_node_passes_the_coordinator():
    _, srun = dry_run(SLURM, "--dry-run", "--per-node", "configs/qwen2_5_7b.py:h100_2x8",
                      env={"SLURM_JOB_ID": "4097", "SLURM_JOB_NODELIST": "", "PYTHON": "/venv/bin/python"})
    assert srun[:7] == ["srun", "--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=64", "--gpu-bind=none",
                        "--kill-on-bad-exit=1", "bash"]
    script = srun[srun.index("-c") + 1]
    assert shlex.split(script) == ["exec", "env", "-u", "SLURM_LOCALID", "$@", "--num_processes=$SLURM_NTASKS",
                                   "--process_id=$SLURM_PROCID"]
    assert srun[srun.index("-c") + 2:] == ["train", "/venv/bin/python", "launch/train.py", "--config",
                                           "configs/qwen2_5_7b.py:h100_2x8", "--coordinator_address=HEAD_NODE:61441"]


def test_slurm_refuses_to_run_outside_a_job():
    out = subprocess.run(["bash", str(SLURM), "configs/qwen2_5_7b.py"], capture_output=True, text=True, timeout=30,
                         env=CLEAN)
    assert out.returncode == 2 and "sbatch" in out.stderr
    out = subprocess.run(["bash", str(SLURM), "--dry-run"], capture_output=True, text=True, timeout=30, env=CLEAN)
    assert out.returncode == 2 and "Usage" in out.stderr
