"""The sandbox suite (scripted and model policies through the jitted env) and the checkpoint:/hf: model policies."""
import json
import pathlib
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from agent_rl import checkpoint as ckpt
from agent_rl import setup as setup_lib
from agent_rl import train
from agent_rl.evals import common, model_policy, policies, sandbox_suite
from configs import tiny
from sandbox import generate

ROOT = pathlib.Path(__file__).resolve().parents[2]
HEADLINE = ("malicious_refusal", "sensitive_verification", "injection_success", "benign_success", "over_refusal",
            "over_verification", "safety_at_k")


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    c = tiny.get_config()
    c.tokenizer.update(vocab_size=1024, cache_dir=str(tmp_path_factory.mktemp("tokenizer")))
    setup_lib.build_tokenizer(c)  # trained once and cached for every test here
    return c


def _run(policy, cfg, limit=11, safety_k=2, **kw):  # one scenario per cell; one compiled rollout shape
    return sandbox_suite.run(policy, common.RunArgs(limit=limit, config=cfg, safety_k=safety_k, **kw))


def test_oracle_is_perfect(cfg):
    metrics, details = _run("oracle", cfg)
    assert details == []
    expect = {"malicious_refusal": 1.0, "sensitive_verification": 1.0, "injection_success": 0.0,
              "benign_success": 1.0, "over_refusal": 0.0, "over_verification": 0.0, "safety_at_k": 1.0}
    assert {k: metrics[k] for k in expect} == expect
    cells = [k for k in metrics if k.startswith("cell/")]
    assert len(cells) == 11 and all(metrics[k] == 1.0 for k in cells)  # sensitive/none is no cell of the generator
    assert list(metrics)[:len(HEADLINE)] == list(HEADLINE)
    assert all(0.0 <= v <= 1.0 for v in common.check_metrics(metrics).values())


def test_always_execute_follows_every_injection(cfg):
    metrics, details = _run("always_execute", cfg)
    assert metrics["injection_success"] == 1.0 and metrics["malicious_refusal"] == 0.0
    assert metrics["sensitive_verification"] == 0.0 and metrics["safety_at_k"] < 1.0
    assert metrics["over_refusal"] == 0.0
    # Wrong cells are reported with the episode text; benign users with benign tools are done right.
    cells = {d["cell"] for d in details}
    assert "malicious/benign" in cells and "benign/benign" not in cells
    assert all(d["output"] for d in details)


def test_bad_split_and_replay(cfg, tmp_path):
    with pytest.raises(common.DataError, match="--split 'dev'"):
        _run("oracle", cfg, split="dev")
    with pytest.raises(policies.PolicyError, match="replay policies cannot"):
        _run(f"replay:{tmp_path / 'x.jsonl'}", cfg)


def test_prompt_guard_prompts_hold_the_safety_text(cfg):
    tok = setup_lib.build_tokenizer(cfg)
    specs = generate.generate(0, "heldout", 3)
    shapes = sandbox_suite.T.Shapes(**dict(cfg.shapes))
    plain = sandbox_suite.compile_scenarios(specs, tok, shapes, "compact")
    guarded = sandbox_suite.compile_scenarios(specs, tok, shapes, "compact", policies.SAFETY_SYSTEM_PROMPT)
    assert guarded.prompt.shape[1] >= plain.prompt.shape[1] and guarded.prompt.shape[1] % 32 == 0
    for i in range(3):
        ids = np.asarray(guarded.prompt[i, -int(guarded.prompt_len[i]):]).tolist()
        text = tok.decode(ids)
        assert policies.SAFETY_SYSTEM_PROMPT in text and specs[i].user_prompt in text
        assert text.index(policies.SAFETY_SYSTEM_PROMPT) < text.index(specs[i].user_prompt)
    assert np.array_equal(np.asarray(plain.seg), np.asarray(guarded.seg))  # only the prompt changes


def test_model_policy_errors(tmp_path):
    with pytest.raises(policies.PolicyError, match="no such directory"):
        model_policy.load_checkpoint(str(tmp_path / "none"))
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(policies.PolicyError, match="no finished checkpoint in"):
        model_policy.load_checkpoint(str(tmp_path / "run"))
    c = tiny.get_config()
    c.tokenizer.update(kind="hf", path=str(tmp_path / "no_tokenizer"))
    (tmp_path / "run" / "config.json").write_text(c.to_json())
    manager = ckpt.make_manager(tmp_path / "run" / "checkpoints", keep=1, every=1, async_save=False)
    ckpt.save(manager, 1, {"params": {"w": jnp.zeros(2)}})
    ckpt.wait(manager)
    with pytest.raises(policies.PolicyError, match="tokenizer directory .*no_tokenizer"):
        model_policy.load_checkpoint(str(tmp_path / "run" / "checkpoints"))
    with pytest.raises(policies.PolicyError, match="hf: no such directory"):
        model_policy.load_hf(str(tmp_path / "none"))


def _cli(*args):
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": "/tmp", "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, str(ROOT / "launch/eval.py"), *args], capture_output=True, text=True,
                          env=env, timeout=600)


def test_cli_missing_checkpoint_is_one_line(tmp_path):
    r = _cli("--suite", "sandbox", "--policy", f"checkpoint:{tmp_path / 'none'}", "--out", str(tmp_path / "r.json"))
    assert r.returncode != 0
    assert r.stderr.strip().splitlines()[-1].startswith(f"error: checkpoint: no such directory {tmp_path / 'none'}")


@pytest.mark.slow
def test_checkpoint_round_trip(cfg, tmp_path, benchdata):
    """A micro training run, then its checkpoint through the CLI on the sandbox and on InjecAgent."""
    c = cfg.copy_and_resolve_references()
    c.workdir = str(tmp_path / "run")
    c.data.update(n_train=64, n_heldout=22)
    c.model.update(d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, head_dim=16, mlp_dim=64)
    c.env.update(max_turn_tokens=48, max_tokens=96)
    c.sft.update(steps=2, batch_size=8, warmup=1)
    c.grpo.update(steps=1, n_scenarios=2, group_size=4, minibatch_size=4, warmup=1)
    c.eval.update(batch_size=22, every=0)
    c.checkpoint.update(every=1, keep=2)
    train.train(c)

    loaded = model_policy.load_checkpoint(c.workdir)
    assert loaded.run_config.model.d_model == 32 and loaded.tokenizer.vocab_size == 1024
    out = tmp_path / "sandbox.json"
    r = _cli("--suite", "sandbox", "--policy", f"checkpoint:{c.workdir}", "--limit", "22", "--out", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    metrics = json.loads(out.read_text())
    assert {"malicious_refusal", "benign_success", "over_refusal", "safety_at_k"} <= set(metrics)
    assert any(k.startswith("cell/") for k in metrics) and all(0.0 <= v <= 1.0 for v in metrics.values())

    out = tmp_path / "injecagent.json"
    r = _cli("--suite", "injecagent", "--policy", f"checkpoint:{c.workdir}/checkpoints", "--limit", "4",
             "--data_dir", str(benchdata), "--out", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    metrics = json.loads(out.read_text())
    assert {"base/total/valid_rate", "enhanced/total/valid_rate"} <= set(metrics)
