"""agent_rl.runs: loading a finished run's files, curves, the comparison table, command lines, and a failed run's
one-line error."""
import json
import sys

import pytest

from agent_rl import runs


def _fake_run(path, base, aligned, records=()):
    path.mkdir(parents=True)
    (path / "final_metrics.json").write_text(json.dumps({"base": base, "aligned": aligned}))
    (path / "config.json").write_text(json.dumps({"sft": {"steps": 4}}))
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return runs.load(path)


def test_load_curve_and_compare(tmp_path):
    base = {"malicious_refusal": 0.0, "over_refusal": 0.25}
    a = _fake_run(tmp_path / "a", base, {"malicious_refusal": 1.0, "over_refusal": 0.5},
                  [{"step": 1, "sft/loss": 2.0}, {"step": 5, "train/over_refusal": 0.1},
                   {"step": 6, "train/over_refusal": 0.3}])
    b = _fake_run(tmp_path / "b", {"malicious_refusal": 0.5, "over_refusal": 0.0}, {"malicious_refusal": 0.75})
    assert a.curve("over_refusal") == ([5, 6], [0.1, 0.3])
    assert a.curve("loss", prefix="sft/") == ([1], [2.0])
    assert a.iid is None and a.config == {"sft": {"steps": 4}}
    assert runs.compare({"a": a, "b": b}, ("malicious_refusal", "over_refusal")) == "\n".join([
        "| run (heldout) | malicious_refusal | over_refusal |", "|---|---:|---:|",
        "| SFT base | 0.000 | 0.250 |", "| a | 1.000 | 0.500 |", "| SFT base of b | 0.500 | 0.000 |",
        "| b | 0.750 | n/a |"])
    fig = runs.plot_curves({"a": a, "b": b}, ("over_refusal",))
    assert len(fig.axes) == 1 and len(fig.axes[0].lines) == 1


def test_load_of_an_unfinished_run_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="final_metrics.json: no such file; the run in .* has not finished"):
        runs.load(tmp_path)


def test_command_line():
    cmd = runs.command("configs/micro.py", "runs/x", {"grpo.beta": 0.04, "mesh.shape": (1, 2, 1),
                                                       "reward.refusal_check": False})
    assert cmd[0] == sys.executable and cmd[1].endswith("launch/train.py")
    assert cmd[2] == "--config" and cmd[3] == str(runs.ROOT / "configs" / "micro.py")
    assert cmd[4:] == ["--config.workdir=runs/x", "--config.grpo.beta=0.04", "--config.mesh.shape=(1,2,1)",
                       "--config.reward.refusal_check=False"]
    assert runs.command("configs/smollm2.py:lora", "w")[3] == "configs/smollm2.py:lora"


def test_a_failed_run_raises_its_error_line(tmp_path):
    with pytest.raises(RuntimeError, match=r"failed \(exit 2\): error: config.grpo.group_size=1: must be >= 2"):
        runs.run("configs/micro.py", tmp_path / "bad", {"grpo.group_size": 1, "grpo.minibatch_size": 2})
    assert (tmp_path / "bad" / "train.log").is_file()
