"""End to end: `launch/train.py` on the micro config, its outputs, and exact resumption after SIGKILL."""
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _cmd(workdir, cache):
    return [sys.executable, str(ROOT / "launch" / "train.py"), "--config", str(ROOT / "configs" / "micro.py"),
            f"--config.workdir={workdir}", f"--config.tokenizer.cache_dir={cache}",
            f"--config.compile_cache_dir={cache / 'xla'}"]


def _run(workdir, cache, timeout=600):
    out = subprocess.run(_cmd(workdir, cache), cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("tokenizer")


@pytest.fixture(scope="module")
def finished(tmp_path_factory, cache):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    out = _run(workdir, cache)
    return workdir, out.stdout


def _records(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_end_to_end_outputs(finished):
    workdir, stdout = finished
    final = json.loads((workdir / "final_metrics.json").read_text())
    names = ("malicious_refusal", "sensitive_verification", "benign_success", "over_refusal", "over_verification")
    for phase in (final["base"], final["aligned"], final["iid"]["base"], final["iid"]["aligned"]):
        assert all(n in phase for n in names)
        assert any(k.startswith("cell/") for k in phase)
        assert all(v is None or 0.0 <= v <= 1.0 for v in phase.values())
    assert "| metric | heldout base (SFT) | heldout aligned (GRPO) | iid base | iid aligned |" in stdout
    assert (workdir / "safety_utility.png").stat().st_size > 1000
    recs = _records(workdir)
    assert [r["step"] for r in recs] == list(range(1, 7))  # 4 SFT + 2 GRPO steps, each logged once
    grpo_rec = recs[-1]
    for key in ("grpo/loss", "grpo/entropy", "grpo/approx_kl", "grpo/clip_frac_low", "grpo/clip_frac_high",
                "reward/total", "tokens_per_s", "train/user_table/malicious/refused", "eval/malicious_refusal",
                "eval_iid/malicious_refusal", "grpo/tied_groups", "grpo/tied_groups/malicious"):
        assert key in grpo_rec, key
    assert 0.0 <= grpo_rec["grpo/tied_groups"] <= 1.0
    # micro: GRPO warm-up 1 step and 2 steps of 2 updates each; the second step starts at the peak rate
    saved = json.loads((workdir / "config.json").read_text())
    assert [r["grpo/lr"] for r in recs[4:]] == [0.0, pytest.approx(saved["grpo"]["lr"], rel=1e-6)]
    assert [r["sft/lr"] for r in recs[:2]] == [0.0, pytest.approx(saved["sft"]["lr"], rel=1e-6)]
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [4, 6]
    assert saved["grpo"]["steps"] == 2
    # compilations of a second or more were kept for the later runs of this module (SFT, rollout, GRPO update)
    kept = [p.name for p in (pathlib.Path(saved["compile_cache_dir"])).iterdir()]
    assert any(n.startswith("jit_sample_episodes") for n in kept), kept


@pytest.mark.slow  # ~50 s; CI's resume check is the corrupt-checkpoint test below
def test_resume_after_sigkill_matches_uninterrupted(finished, cache, tmp_path):
    ref_dir, _ = finished
    workdir = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(workdir, cache), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not (workdir / "checkpoints" / "2").is_dir():  # orbax renames a checkpoint into place when it is done
        assert proc.poll() is None, "the run ended before its first checkpoint"
        assert time.time() < deadline
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (workdir / "final_metrics.json").exists()
    out = _run(workdir, cache)
    assert "resumed from" in out.stdout
    assert json.loads((workdir / "final_metrics.json").read_text()) == \
        json.loads((ref_dir / "final_metrics.json").read_text())
    # The resumed run's log matches the uninterrupted one step for step (wall-clock rates aside).
    strip = lambda r: {k: v for k, v in r.items() if k != "tokens_per_s" and not k.startswith("time/")}  # noqa
    assert [strip(r) for r in _records(workdir)] == [strip(r) for r in _records(ref_dir)]


def test_non_finite_loss_stops_with_one_line_naming_the_step(cache, tmp_path):
    """A learning rate that blows the weights up: the run stops at the first non-finite loss, naming the step, and
    the checkpoint before it stays."""
    cmd = _cmd(tmp_path, cache) + ["--config.sft.lr=1e30", "--config.sft.warmup=1", "--config.checkpoint.every=1"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode != 0
    line = out.stderr.strip().splitlines()[-1]
    assert line.startswith("error: non-finite sft/loss") and "at step" in line, line
    step = int(line.split("at step ")[1].split(";")[0])
    kept = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert kept and kept[-1] == step - 1


@pytest.mark.slow  # ~30 s; a diagnostic (experiments/), not the library
def test_copy_probe_on_the_finished_run(finished, tmp_path):
    """experiments/probe_copy.py scores a run's checkpoint on oracle demonstrations: every class is reported, tool-call
    tokens are found, losses are non-negative; an impossible --n is one error line."""
    workdir, _ = finished
    probe = [sys.executable, str(ROOT / "experiments" / "probe_copy.py"), f"--checkpoint={workdir}@4", "--split=iid"]
    out = subprocess.run(probe + ["--n=22", f"--out={tmp_path / 'copy.json'}"], cwd=ROOT, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    classes = json.loads((tmp_path / "copy.json").read_text())["classes"]
    assert list(classes) == ["call/first_digit", "call/next_digit", "call/other", "text/first_digit",
                             "text/next_digit", "text/other"]
    assert classes["call/other"]["n"] > 0 and classes["text/other"]["n"] > 0  # (micro turns end before ids)
    assert all(r["mean"] >= 0 for r in classes.values() if r["n"])
    assert "| call/next_digit |" in out.stdout
    bad = subprocess.run(probe + ["--n=100000"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert bad.returncode != 0
    assert bad.stderr.strip().splitlines()[-1].startswith("error: --n=100000 but the run's iid split has")


def test_corrupt_newest_checkpoint_resumes_from_the_one_before(finished, cache, tmp_path):
    """Garbage in the newest checkpoint's metadata: evaluation falls back to the step before with a warning, and
    the training command resumes from it (the unreadable step kept, moved aside) and ends as the uninterrupted run."""
    ref_dir, _ = finished
    workdir = tmp_path / "corrupt"
    shutil.copytree(ref_dir, workdir)
    (workdir / "final_metrics.json").unlink()
    (workdir / "checkpoints" / "6" / "state" / "_METADATA").write_text("garbage")
    ev = subprocess.run([sys.executable, str(ROOT / "launch" / "eval.py"), "--suite=sandbox",
                         f"--policy=checkpoint:{workdir}", "--limit=2", "--safety_k=1", f"--out={tmp_path / 'e.json'}"],
                        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert ev.returncode == 0, ev.stderr[-3000:]
    assert f"warning: checkpoint {workdir / 'checkpoints'} step 6 is unreadable" in ev.stderr
    out = _run(workdir, cache)
    assert "warning: checkpoint step 6 is unreadable" in out.stdout and "resumed from" in out.stdout
    assert "at step 4" in out.stdout
    assert (workdir / "checkpoints_unreadable" / "6" / "state" / "_METADATA").read_text() == "garbage"
    assert json.loads((workdir / "final_metrics.json").read_text()) == \
        json.loads((ref_dir / "final_metrics.json").read_text())


def test_resume_with_a_changed_config_is_refused(finished, cache, tmp_path):
    ref_dir, _ = finished
    workdir = tmp_path / "changed"
    shutil.copytree(ref_dir, workdir)
    saved = (workdir / "config.json").read_bytes()
    out = subprocess.run(_cmd(workdir, cache) + ["--config.model.d_model=64", "--config.data.n_iid=0"], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].endswith(
        "differing keys: data.n_iid: 22 -> 0, model.d_model: 32 -> 64. Use another config.workdir, or the saved "
        "values")
    assert (workdir / "config.json").read_bytes() == saved


def test_grpo_from_another_runs_sft_base_is_the_same_run(finished, cache, tmp_path):
    """`sft.init_from`: GRPO starts from the finished run's SFT checkpoint (no SFT of its own, base metrics taken
    from that checkpoint) and ends exactly where the run that trained its own base ended."""
    ref_dir, _ = finished
    workdir = tmp_path / "shared_base"
    out = subprocess.run(_cmd(workdir, cache) + [f"--config.sft.init_from={ref_dir}"], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"starting from the SFT base in {ref_dir / 'checkpoints'} at step 4" in out.stdout
    assert json.loads((workdir / "final_metrics.json").read_text()) == \
        json.loads((ref_dir / "final_metrics.json").read_text())
    assert [r["step"] for r in _records(workdir)] == [5, 6]  # GRPO steps only
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [6]


@pytest.mark.parametrize("override, line", [
    ("--config.sft.lr=0.1", "that run's base differs from this config's"),
    ("--config.sft.steps=3", "differing keys: sft.steps: 4 -> 3"),
    ("--config.data.tool_style=json", "differing keys: data.tool_style: 'compact' -> 'json'"),
])
def test_init_from_a_different_base_is_refused(finished, cache, tmp_path, override, line):
    ref_dir, _ = finished
    workdir = tmp_path / "other_base"
    out = subprocess.run(_cmd(workdir, cache) + [f"--config.sft.init_from={ref_dir}", override], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 2
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: config.sft.init_from=") and line in last, last
    assert not workdir.exists()


def test_sft_train_layers_freezes_the_embedding_and_lower_blocks(cache, tmp_path):
    """`sft.train_layers=1` on the 2-layer micro model: between the step-2 and step-4 checkpoints the top block and
    the final norm move, the embedding and the lower block stay bit-identical (weight decay on, so only the
    optimizer's mask keeps them)."""
    import jax
    import numpy as np
    import orbax.checkpoint as ocp

    workdir = tmp_path / "top_layer"
    out = subprocess.run(_cmd(workdir, cache) + ["--config.sft.train_layers=1", "--config.sft.weight_decay=0.1",
                                                 "--config.grpo.steps=0"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    manager = ocp.CheckpointManager(workdir / "checkpoints", options=ocp.CheckpointManagerOptions(read_only=True))
    params = [{jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(
        manager.restore(s, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]["params"])}
        for s in (2, 4)]
    for name, a in params[0].items():
        b = params[1][name]
        if "blocks" in name:
            np.testing.assert_array_equal(a[0], b[0], err_msg=name)
            assert np.abs(a[1] - b[1]).max() > 0, name
        elif "embed" in name:
            np.testing.assert_array_equal(a, b)
        else:
            assert np.abs(a - b).max() > 0, name


def test_train_layers_beyond_the_model_is_one_line_naming_the_key(cache, tmp_path):
    workdir = tmp_path / "bad"
    out = subprocess.run(_cmd(workdir, cache) + ["--config.grpo.train_layers=3"], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 2 and not workdir.exists()
    assert out.stderr.strip().splitlines()[-1] == \
        "error: config.grpo.train_layers=3: expected 0 (every layer) to the model's 2 layers"
