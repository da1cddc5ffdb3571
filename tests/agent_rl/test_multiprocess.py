"""Multi-process training on one machine: 2 processes x 4 CPU devices, joined by jax.distributed over the loopback
address, train the micro config (SFT and GRPO steps, evaluations, checkpoints) to the results of 1 process x 8
devices and of 1 process x 1 device; only process 0 writes; killing both processes mid-run and re-running resumes; a
missing peer is one error line.

Tolerance. The final metrics (rates of discrete outcomes of greedy episodes) must be equal. The numbers logged per
step (losses, gradient norms, rewards, rates) are compared with a relative tolerance of 1e-5: with the batch split 8
ways and parameters sharded over fsdp, sums are taken per shard and then all-reduced, in another order than on one
device, so losses differ in their last bits (~2e-7 relative here, 2 ulps of float32), while other rows in a batch or
a missing all-reduce move a loss far more (successive SFT batches' losses differ by ~3e-3).

CI time: every run here compiles at XLA's lowest backend optimisation level (alike for all, so the comparison holds;
compiling is most of a cold micro run and this halves it), leaves out the iid split (the same evaluation code as
heldout) and the micro run's second GRPO step (its groups' rewards tie: a no-op update), and the processes run at
the same time. The 1 x 8 layout runs only with `--runslow`: CI compares 2 x 4 with 1 x 1, which differ in both
the sharding and the process count. Cross-process collectives (gloo over TCP) cost milliseconds each, which the
rollout's per-token loop feels: the 2 x 4 run is the slowest.
"""
import json
import math
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import pytest

from agent_rl import distributed

ROOT = pathlib.Path(__file__).resolve().parents[2]
MESH = "--config.mesh.shape=(4,2,1)"  # data 4 x fsdp 2: batches split 8 ways, parameters sharded over fsdp
RTOL = 1e-5
FAST_COMPILE = "--xla_backend_optimization_level=0"
# seed 2: the first GRPO step's groups do not all tie in reward (with seed 0 they do, and the update is a no-op)
CI_SIZE = ("--config.data.n_iid=0", "--config.grpo.steps=1", "--config.seed=2")
TIMEOUT = 900


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cmd(workdir, cache, *extra):
    return [sys.executable, str(ROOT / "launch" / "train.py"), "--config", str(ROOT / "configs" / "micro.py"),
            f"--config.workdir={workdir}", f"--config.tokenizer.cache_dir={cache}", *CI_SIZE, *extra]


def _start(cmd, devices: int, log: pathlib.Path) -> subprocess.Popen:
    """`cmd` on `devices` host CPU devices, stdout and stderr to <log>.out and <log>.err."""
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE}",
           "JAX_PLATFORMS": "cpu"}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=open(f"{log}.out", "w"), stderr=open(f"{log}.err", "w"))


def _cluster(workdir, cache, *extra, processes: int = 2, devices: int = 4) -> list[subprocess.Popen]:
    port = _free_port()
    return [_start(_cmd(workdir, cache, MESH, f"--coordinator_address=127.0.0.1:{port}",
                        f"--num_processes={processes}", f"--process_id={i}", *extra), devices,
                   f"{workdir}.p{i}") for i in range(processes)]


def _finish(procs: list[subprocess.Popen], timeout: float = TIMEOUT) -> None:
    deadline = time.time() + timeout
    for p in procs:
        try:
            p.wait(max(deadline - time.time(), 1))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    for p in procs:
        assert p.returncode == 0, f"{p.args}: exit {p.returncode}"


def _read(path) -> str:
    path = pathlib.Path(path)
    return path.read_text() if path.exists() else ""


def _records(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _close(a: dict, b: dict) -> list[str]:
    """Keys of two metrics records that differ: numbers beyond RTOL, anything else at all (wall-clock figures,
    tokens_per_s and time/*, aside)."""
    bad = []
    for k in sorted(set(a) | set(b)):
        x, y = a.get(k), b.get(k)
        if k == "tokens_per_s" or k.startswith("time/"):
            continue
        if isinstance(x, float) and isinstance(y, float):
            if not math.isclose(x, y, rel_tol=RTOL, abs_tol=1e-9):
                bad.append(f"{k}: {x} vs {y}")
        elif x != y:
            bad.append(f"{k}: {x} vs {y}")
    return bad


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("tokenizer")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, cache, request):
    """{"1x1", "2x4"} (and "1x8" with --runslow): workdirs of the micro run on each layout, run at the same time."""
    base = tmp_path_factory.mktemp("layouts")
    names = ("1x1", "1x8", "2x4") if request.config.getoption("--runslow") else ("1x1", "2x4")
    dirs = {name: base / name for name in names}
    procs = {"2x4": _cluster(dirs["2x4"], cache), "1x1": [_start(_cmd(dirs["1x1"], cache), 1, base / "1x1")]}
    if "1x8" in dirs:
        procs["1x8"] = [_start(_cmd(dirs["1x8"], cache, MESH), 8, base / "1x8")]
    for name, ps in procs.items():
        try:
            _finish(ps)
        except AssertionError:
            errs = [_read(f"{base / name}.err")] + [_read(f"{base / name}.p{i}.err") for i in range(2)]
            raise AssertionError(f"{name} failed:\n" + "\n".join(e[-3000:] for e in errs if e))
    return dirs


def test_two_processes_match_one_process(runs):
    final = {name: json.loads((d / "final_metrics.json").read_text()) for name, d in runs.items()}
    assert all(f == final["1x1"] for f in final.values()), final
    logs = {name: _records(d) for name, d in runs.items()}
    assert [r["step"] for r in logs["2x4"]] == list(range(1, 6))  # 4 SFT steps and a GRPO step, each logged once
    assert logs["2x4"][-1]["grpo/loss"] != 0  # (its advantages are not all 0: the update does something)
    for other in sorted(set(runs) - {"2x4"}):
        for a, b in zip(logs["2x4"], logs[other], strict=True):
            assert not _close(a, b), (other, a["step"], _close(a, b))
    assert sorted(int(p.name) for p in (runs["2x4"] / "checkpoints").iterdir() if p.name.isdigit()) == [4, 5]


def test_only_process_zero_prints_and_writes(runs):
    out0, out1 = (_read(f"{runs['2x4']}.p{i}.out") for i in (0, 1))
    assert "distributed: 2 processes, 8 devices, 4 per process" in out0
    assert "| metric | heldout base (SFT) |" in out0 and "wall time" in out0
    assert out1.strip() == ""  # process 1's stdout, Python's and native code's, is dropped
    assert (runs["2x4"] / "safety_utility.png").stat().st_size > 1000
    assert json.loads((runs["2x4"] / "config.json").read_text())["mesh"]["shape"] == [4, 2, 1]


@pytest.mark.slow  # ~2 more minutes of the slowest layout
def test_resume_after_killing_both_processes(runs, cache, tmp_path):
    workdir = tmp_path / "killed"
    procs = _cluster(workdir, cache)
    deadline = time.time() + TIMEOUT
    while not (workdir / "checkpoints" / "2").is_dir():  # orbax renames a checkpoint into place when it is done
        assert all(p.poll() is None for p in procs), _read(f"{workdir}.p0.err")[-3000:]
        assert time.time() < deadline
        time.sleep(0.2)
    for p in procs:
        os.kill(p.pid, signal.SIGKILL)
    for p in procs:
        p.wait()
    assert not (workdir / "final_metrics.json").exists()
    procs = _cluster(workdir, cache)
    try:
        _finish(procs)
    except AssertionError:
        raise AssertionError(_read(f"{workdir}.p0.err")[-3000:] + _read(f"{workdir}.p1.err")[-3000:])
    assert "resumed from" in _read(f"{workdir}.p0.out") and "at step 2" in _read(f"{workdir}.p0.out")
    assert json.loads((workdir / "final_metrics.json").read_text()) == \
        json.loads((runs["2x4"] / "final_metrics.json").read_text())
    for a, b in zip(_records(workdir), _records(runs["2x4"]), strict=True):
        assert not _close(a, b), (a["step"], _close(a, b))


def test_a_missing_process_is_one_error_line_within_the_timeout(cache, tmp_path):
    """Process 0 of 2 started alone: it waits --distributed_timeout seconds for process 1, then stops with one line."""
    port = _free_port()
    t0 = time.time()
    out = subprocess.run(_cmd(tmp_path / "alone", cache, f"--coordinator_address=127.0.0.1:{port}",
                              "--num_processes=2", "--process_id=0", "--distributed_timeout=3"),
                         cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2, out.stderr[-3000:]
    assert time.time() - t0 < 60
    lines = out.stderr.strip().splitlines()
    assert lines[-1].startswith("error: distributed: process 0 of 2: not every process connected to the "
                                f"coordinator at 127.0.0.1:{port} within 3 s"), lines[-3:]
    assert not (tmp_path / "alone" / "config.json").exists()


def test_no_cluster_no_flags_initializes_nothing(monkeypatch):
    for var in ("SLURM_JOB_ID", "OMPI_MCA_orte_hnp_uri", "KUBERNETES_SERVICE_HOST"):
        monkeypatch.delenv(var, raising=False)
    assert distributed.detected_cluster() is None
    assert distributed.initialize() is False
    slurm = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "node1", "SLURM_NTASKS": "1", "SLURM_PROCID": "0",
             "SLURM_LOCALID": "0"}
    for k, v in slurm.items():
        monkeypatch.setenv(k, v)
    assert distributed.detected_cluster() is None  # a SLURM job of one task is a one-process run
    monkeypatch.setenv("SLURM_NTASKS", "2")
    assert distributed.detected_cluster() == "SlurmCluster"
