"""Config rules checked before a run writes anything, what may change on resume, the newest readable checkpoint,
and the one-line errors (exit status 2) of the launch entry points."""
import json
import pathlib
import subprocess
import sys

import jax.numpy as jnp
import pytest

from agent_rl import checkpoint, cli, run_config
from configs import ablation, micro, tiny

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _cfg(**overrides):
    c = micro.get_config()
    for dotted, v in overrides.items():
        *path, leaf = dotted.split("__")
        node = c
        for p in path:
            node = node[p]
        node[leaf] = v
    return c


def _problems(cfg) -> list[str]:
    with pytest.raises(run_config.ConfigError) as e:
        run_config.validate(cfg)
    return str(e.value).splitlines()


def test_shipped_configs_are_valid():
    run_config.validate(tiny.get_config())
    run_config.validate(micro.get_config())
    for variant in ablation.VARIANTS:
        run_config.validate(ablation.get_config(variant))


def test_ablation_variants_change_only_the_reward_and_workdir():
    default = run_config._flat(tiny.get_config().to_dict())
    for variant, (channels, kind) in ablation.VARIANTS.items():
        flat = run_config._flat(ablation.get_config(variant).to_dict())
        assert flat == {**default, "workdir": f"runs/{variant}", "reward.channels": channels, "reward.kind": kind}
    assert set(ablation.VARIANTS) == {"user_only_paper", "user_only_shaped", "user_tool_paper"}
    for bad in ("", "user_tool_shaped"):
        with pytest.raises(ValueError, match=f"unknown variant {bad!r}; expected one of"):
            ablation.get_config(bad)


def test_channels_narrow_only_what_grpo_samples():
    """User-only and user+tool alignment share the SFT base and the evaluation splits (so one base serves both,
    `sft.init_from`); user-only GRPO samples exactly the train rows with no threat in a tool response."""
    from agent_rl import setup

    cfg = micro.get_config()
    both = ablation.get_config("user_tool_paper")
    both.data = cfg.data
    user = ablation.get_config("user_only_paper")
    user.data = cfg.data
    specs = setup.scenario_specs(both)
    assert [s.id for k in ("train", "iid", "heldout") for s in specs[k]] == \
        [s.id for k in ("train", "iid", "heldout") for s in setup.scenario_specs(user)[k]]
    train = specs["train"]
    assert setup.grpo_rows(both, train).tolist() == list(range(len(train)))
    rows = setup.grpo_rows(user, train).tolist()
    assert rows == [i for i, s in enumerate(train) if s.tool_kind not in ("malicious", "sensitive")]
    assert 0 < len(rows) < len(train)
    assert any(k.startswith("reward.channels") for k in run_config.FREE_OF_BASE)


def test_sft_mixture_names_every_policy_and_zero_weights_change_no_draw():
    """Every scripted policy is a key of the default mixture (so `--config.sft.mixture.always_check=0.1` works), and
    a policy of weight 0 leaves the drawn demonstrations exactly those of the mixture without it."""
    import numpy as np

    from agent_rl import setup
    from sandbox import types as T

    assert sorted(tiny.get_config().sft.mixture.keys()) == sorted(T.POLICIES)
    short = setup.draw_policies({"always_execute": 0.85, "oracle": 0.15}, 4096, seed=0)
    full = setup.draw_policies(dict(tiny.get_config().sft.mixture), 4096, seed=0)
    np.testing.assert_array_equal(short, full)
    assert set(short.tolist()) == {T.ALWAYS_EXECUTE, T.ORACLE}
    mixed = setup.draw_policies({"always_execute": 0.75, "oracle": 0.15, "always_check": 0.10}, 20000, seed=1)
    np.testing.assert_allclose(np.bincount(mixed, minlength=len(T.POLICIES)) / mixed.size,
                               [0.15, 0.75, 0.0, 0.10], atol=0.01)  # POLICIES order: oracle, execute, refuse, check
    with pytest.raises(ValueError, match="config.sft.mixture: unknown scripted policies"):
        setup.draw_policies({"always_run": 1.0}, 4, seed=0)


@pytest.mark.parametrize("key, value, rule", [
    ("grpo__n_scenarios", 0, "config.grpo.n_scenarios=0: must be a number >= 1"),
    ("grpo__group_size", 1, "config.grpo.group_size=1: must be >= 2"),
    ("grpo__minibatch_size", 16, "config.grpo.minibatch_size=16: must divide the rollout batch"),
    ("grpo__microbatch", 3, "config.grpo.microbatch=3: must divide grpo.minibatch_size"),
    ("grpo__adv_mode", "median", "config.grpo.adv_mode='median': must be one of"),
    ("checkpoint__every", 0, "config.checkpoint.every=0: must be a number >= 1"),
    ("tokenizer__kind", "word", "config.tokenizer.kind='word': must be one of"),
    ("mesh__shape", (2, 1, 1), "config.mesh.shape=[2, 1, 1]: needs 2 devices"),
    ("sft__microbatch", 3, "config.sft.batch_size=8: must be a multiple of sft.microbatch"),
    ("sft__mixture", {"always_run": 1.0}, "config.sft.mixture.always_run=1.0: unknown scripted policy"),
    ("reward__weights", {"bonus": 1.0}, "config.reward.weights.bonus=1.0: unknown weight"),
    ("env__max_tokens", 0, "config.env.max_tokens=0: must be a number >= 1"),
])
def test_each_broken_rule_is_one_line_naming_the_key(key, value, rule):
    problems = _problems(_cfg(**{key: value}))  # (a rule can break another: group_size 1 leaves 2 rollouts)
    assert problems[0].startswith(rule) and all(p.startswith("config.") for p in problems), problems


def test_every_problem_is_reported_at_once(tmp_path):
    problems = _problems(_cfg(grpo__n_scenarios=0, checkpoint__every=0, tokenizer__kind="hf",
                              tokenizer__path=str(tmp_path / "none")))
    assert [p.split("=")[0] for p in problems] == ["config.tokenizer.path", "config.grpo.n_scenarios",
                                                   "config.checkpoint.every"]


def test_no_grpo_phase_needs_no_grpo_batch_rules():
    run_config.validate(_cfg(grpo__steps=0, grpo__n_scenarios=0, grpo__group_size=1))


def test_resume_changes_split_blocking_from_allowed():
    saved = micro.get_config().to_dict()
    new = _cfg(grpo__steps=9, eval__batch_size=11, model__d_model=64, data__n_iid=0).to_dict()
    del new["sft"]["weight_decay"]
    blocking, allowed = run_config.resume_changes(saved, new)
    assert blocking == {"data.n_iid": (22, 0), "model.d_model": (32, 64), "sft.weight_decay": (0.0, "(absent)")}
    assert allowed == {"eval.batch_size": (22, 11), "grpo.steps": (2, 9)}
    assert run_config.resume_changes(saved, micro.get_config().to_dict()) == ({}, {})


def test_a_key_added_since_the_run_matches_only_its_old_behaviour():
    """A run saved before `grpo.train_layers` existed trained every layer: it matches 0, not 10."""
    saved = micro.get_config().to_dict()
    del saved["grpo"]["train_layers"], saved["sft"]["train_layers"]
    assert run_config.resume_changes(saved, micro.get_config().to_dict()) == ({}, {})
    blocking, _ = run_config.resume_changes(saved, _cfg(grpo__train_layers=1).to_dict())
    assert blocking == {"grpo.train_layers": ("(absent)", 1)}


def _resumable(tmp_path, cfg):
    (tmp_path / "checkpoints" / "4").mkdir(parents=True)
    (tmp_path / "config.json").write_text(cfg.to_json(indent=2))
    return (tmp_path / "config.json").read_bytes()


def test_check_resume_refuses_a_changed_config_and_writes_nothing(tmp_path):
    saved = _resumable(tmp_path, _cfg(workdir=str(tmp_path)))
    with pytest.raises(run_config.ConfigError) as e:
        run_config.check_resume(_cfg(workdir=str(tmp_path), model__d_model=64, shapes__prompt=600), tmp_path)
    assert "differing keys: model.d_model: 32 -> 64, shapes.prompt: 512 -> 600" in str(e.value)
    assert len(str(e.value).splitlines()) == 1
    assert (tmp_path / "config.json").read_bytes() == saved and not (tmp_path / "resumes.jsonl").exists()


def test_check_resume_records_allowed_changes(tmp_path, capsys):
    _resumable(tmp_path, _cfg(workdir=str(tmp_path)))
    run_config.check_resume(_cfg(workdir=str(tmp_path), grpo__steps=5), tmp_path)
    run_config.check_resume(_cfg(workdir=str(tmp_path)), tmp_path)  # unchanged: nothing recorded
    records = [json.loads(line) for line in (tmp_path / "resumes.jsonl").read_text().splitlines()]
    assert [r["changed"] for r in records] == [{"grpo.steps": [2, 5]}]
    assert "changed settings: grpo.steps: 2 -> 5" in capsys.readouterr().out


def test_check_resume_ignores_a_workdir_without_checkpoints(tmp_path):
    (tmp_path / "config.json").write_text(_cfg(model__d_model=64).to_json())
    run_config.check_resume(_cfg(), tmp_path)  # killed before its first checkpoint: a fresh start


@pytest.mark.parametrize("damage", ["metadata", "truncate"])
def test_restore_newest_skips_an_unreadable_checkpoint(tmp_path, damage):
    manager = checkpoint.make_manager(tmp_path, keep=3, every=1)
    for step in (1, 2):
        checkpoint.save(manager, step, {"w": jnp.full((64,), float(step))}, {"step": step})
    checkpoint.wait(manager)
    state_dir = tmp_path / "2" / "state"
    if damage == "metadata":
        (state_dir / "_METADATA").write_text("garbage")
    else:
        for f in (state_dir / "d").iterdir():
            f.write_bytes(f.read_bytes()[:10])
    skipped = []
    got = checkpoint.restore_newest(manager, lambda s: {"w": jnp.zeros((64,))}, lambda s, e: skipped.append(s))
    assert skipped == [2]
    step, state, meta = got
    assert step == 1 and meta == {"step": 1} and float(state["w"][0]) == 1.0
    assert checkpoint.restore_newest(manager, lambda s: {"w": jnp.zeros((3,))}) is None  # nothing fits: None


def test_train_passes_the_config_variant(tmp_path):
    """--config FILE:VARIANT reaches get_config: the variant's config loads and is checked (here, rejected)."""
    out = _launch("train.py", "--config", f"{ROOT / 'configs' / 'ablation.py'}:user_only_shaped",
                  f"--config.workdir={tmp_path / 'w'}", "--config.grpo.n_scenarios=0")
    assert out.returncode == cli.EXIT_ERROR
    assert out.stderr.strip() == "error: config.grpo.n_scenarios=0: must be a number >= 1", out.stderr[-2000:]


@pytest.mark.parametrize("args, line", [
    (["--config.grpo.stepz=3"], 'error: --config.grpo.stepz: no config key \'stepz\' (did you mean "steps"?)'),
    (["--config", f"{ROOT / 'configs' / 'ablation.py'}:nope"],
     "error: flags: flag --config=" + str(ROOT / "configs" / "ablation.py") + ":nope: ValueError: configs/ablation.py: "
     "unknown variant 'nope'"),
])
def test_config_file_errors_are_one_line(args, line):
    """Errors raised while the config file loads (the default one at import, or a variant's get_config)."""
    out = _launch("train.py", *args)
    assert out.returncode == cli.EXIT_ERROR
    assert len(out.stderr.strip().splitlines()) == 1 and out.stderr.startswith(line), out.stderr[-2000:]


def test_unwritable_output_paths(tmp_path):
    assert cli.unwritable(str(tmp_path)) == "is a directory; expected a file path"
    assert cli.unwritable(str(tmp_path / "no" / "r.json")).startswith("its directory")
    assert cli.unwritable(str(tmp_path / "r.json")) is None and cli.unwritable(None) is None


def _launch(script, *args):
    return subprocess.run([sys.executable, str(ROOT / "launch" / script), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("args, line", [
    (["--config.grpo.stepz=3"], 'error: --config.grpo.stepz: no config key \'stepz\' (did you mean "steps"?)'),
    (["--config.grpo.n_scenarios=0"], "error: config.grpo.n_scenarios=0: must be a number >= 1"),
    (["--config.shapes.prompt=16"], "error: set-up: scenario 'train-0-000000': prompt (Shapes.prompt): "),
])
def test_train_errors_are_one_line_and_exit_2(tmp_path, args, line):
    out = _launch("train.py", "--config", str(ROOT / "configs" / "micro.py"), f"--config.workdir={tmp_path / 'w'}",
                  f"--config.tokenizer.cache_dir={tmp_path / 'cache'}", *args)
    assert out.returncode == cli.EXIT_ERROR
    assert len(out.stderr.strip().splitlines()) == 1 and out.stderr.startswith(line), out.stderr[-2000:]
    assert not (tmp_path / "w").exists()  # nothing written by a run that failed its checks


@pytest.mark.parametrize("args, line", [
    (["--limit=-5"], "error: --limit=-5 --safety_k=0: each must be >= 0"),
    (["--out=/"], "error: --out=/: is a directory; expected a file path"),
    (["--details_out=/nonexistent_dir/d.jsonl"], "error: --details_out=/nonexistent_dir/d.jsonl: its directory"),
])
def test_eval_argument_errors_come_before_the_evaluation(tmp_path, args, line):
    base = {"--out": str(tmp_path / "r.json")}
    base.update(a.split("=", 1) for a in args)
    out = _launch("eval.py", "--suite=sandbox", "--policy=oracle", *(f"{k}={v}" for k, v in base.items()))
    assert out.returncode == cli.EXIT_ERROR
    assert out.stderr.strip().splitlines()[-1].startswith(line), out.stderr[-2000:]
    assert not (tmp_path / "r.json").exists()
