"""launch/eval.py end to end on the real data, and the shared pieces it stands on (data directory, loading,
results file, policy specs, prompt guard, suite registry)."""
import json
import pathlib
import subprocess
import sys

import pytest

from agent_rl import evals
from agent_rl.evals import common, policies
from sandbox import protocol as P

ROOT = pathlib.Path(__file__).resolve().parents[2]


def cli(*args, env_data=None):
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": "/tmp", "JAX_PLATFORMS": "cpu"}
    if env_data:
        env[common.ENV_VAR] = str(env_data)
    return subprocess.run([sys.executable, str(ROOT / "launch/eval.py"), *args], capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.mark.parametrize("policy, asr", [("always_execute", 1.0), ("always_refuse", 0.0), ("oracle", 0.0)])
def test_injecagent_acceptance(benchdata, tmp_path, policy, asr):
    out = tmp_path / "r.json"
    r = cli("--suite", "injecagent", "--policy", policy, "--out", str(out), env_data=benchdata)
    assert r.returncode == 0, r.stderr
    metrics = json.loads(out.read_text())
    for s in ("base", "enhanced"):
        assert metrics[f"{s}/dh/asr_valid"] == asr and metrics[f"{s}/total/asr_valid"] == asr
        assert metrics[f"{s}/total/asr_all"] == asr
        if policy == "oracle":
            assert all(metrics[f"{s}/{a}/valid_rate"] == 1.0 for a in ("dh", "ds_s1", "ds", "total"))
    assert f"| base/dh/asr_valid | {asr:.4f} |" in r.stdout
    assert all(0.0 <= v <= 1.0 for v in metrics.values())


def test_bfcl_replay_lists_failures(benchdata, tmp_path):
    from agent_rl.evals import bfcl
    cases = bfcl.load_cases(benchdata / "bfcl", ["simple_python"])
    truth = bfcl.ground_truth_outputs({"simple_python": cases["simple_python"][:5]})
    ids = list(truth)
    truth[ids[1]] = P.policy_turn("no idea", "I don't know.")  # wrong: no call
    replay = tmp_path / "replay.jsonl"
    replay.write_text("".join(json.dumps({"id": k, "output": v}) + "\n" for k, v in truth.items()))
    out, details = tmp_path / "r.json", tmp_path / "d.jsonl"
    r = cli("--suite", "bfcl", "--policy", f"replay:{replay}", "--split", "simple_python", "--limit", "5",
            "--data_dir", str(benchdata), "--out", str(out), "--details_out", str(details))
    assert r.returncode == 0, r.stderr
    assert json.loads(out.read_text()) == {"simple_python/accuracy": 0.8}
    assert "1 failing case(s):" in r.stdout and f"- {ids[1]} [simple_python]" in r.stdout
    assert [json.loads(line)["id"] for line in details.read_text().splitlines()] == [ids[1]]


def test_agent_safetybench_cli(benchdata, tmp_path):
    out = tmp_path / "r.json"
    r = cli("--suite", "agent_safetybench", "--policy", "always_refuse", "--split", "unfulfillable", "--limit", "50",
            "--out", str(out), "--data_dir", str(benchdata))
    assert r.returncode == 0, r.stderr
    assert json.loads(out.read_text()) == {"proxy/safe_rate": 1.0, "proxy/safe_rate_unfulfillable": 1.0}


def test_cli_errors_are_one_line(tmp_path, benchdata):
    r = cli("--suite", "injecagent", "--policy", "oracle", "--out", str(tmp_path / "r.json"))
    assert r.returncode != 0 and r.stderr.strip().splitlines() == [
        "error: injecagent: no benchmark data directory given; pass --data_dir (data_dir=...) or set "
        "AGENT_RL_BENCHDATA to the folder that holds injecagent/"]
    r = cli("--suite", "injecagent", "--policy", f"replay:{tmp_path / 'none.jsonl'}", "--out", str(tmp_path / "r"),
            env_data=benchdata)
    assert r.returncode != 0 and r.stderr.strip() == f"error: replay: no such file {tmp_path / 'none.jsonl'}"
    r = cli("--suite", "nope", "--policy", "oracle", "--out", str(tmp_path / "r.json"))
    assert r.returncode != 0 and "unknown suite 'nope'" in r.stderr


# ---------------------------------------------------------------------------------------------------- common

def test_resolve_data_dir(tmp_path, monkeypatch):
    (tmp_path / "bench" / "sub").mkdir(parents=True)
    (tmp_path / "bench" / "sub" / "f.json").write_text("[]")
    assert common.resolve_data_dir(tmp_path, "bench", ["sub/f.json"]) == tmp_path / "bench"
    assert common.resolve_data_dir(tmp_path / "bench", "bench", ["sub/f.json"]) == tmp_path / "bench"
    with pytest.raises(common.DataError, match=r"missing .*bench/sub/g.json; point --data_dir"):
        common.resolve_data_dir(tmp_path, "bench", ["sub/g.json"])
    with pytest.raises(common.DataError, match="does not exist"):
        common.resolve_data_dir(tmp_path / "nowhere", "bench")
    monkeypatch.setenv(common.ENV_VAR, str(tmp_path))
    assert common.resolve_data_dir(None, "bench") == tmp_path / "bench"


def test_loading_errors_name_file_and_line(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"a": 1}\n\n{"a": \n')
    with pytest.raises(common.DataError, match=r"x.jsonl: line 3 is not valid JSON"):
        common.load_jsonl(p)
    with pytest.raises(common.DataError, match="missing file"):
        common.load_json(tmp_path / "none.json")
    with pytest.raises(common.DataError, match=r"rec 4: field 'n' should be int, got bool"):
        common.field({"n": True}, "n", int, "rec 4")


def test_results_file_and_table(tmp_path):
    common.write_results(tmp_path / "r.json", {"b/x": 0.25, "a/y": 1})
    assert (tmp_path / "r.json").read_text() == '{\n "b/x": 0.25,\n "a/y": 1.0\n}\n'
    for bad in (1.5, -0.1, float("nan"), "0.3", True):
        with pytest.raises(ValueError, match="not a fraction"):
            common.write_results(tmp_path / "s.json", {"m": bad})
    assert common.markdown_table({"m": 0.125}).splitlines() == ["| metric | value | % |", "|---|---:|---:|",
                                                               "| m | 0.1250 | 12.5 |"]


def test_parse_turn():
    t = common.parse_turn(P.think("a <tool_check>x</tool_check>") + "hi " + P.tool_check(" Pay ")
                          + P.tool_call("f", {"k": 1}) + " bye" + P.IM_END + P.tool_call("g", {}))
    assert t.think == "a <tool_check>x</tool_check>" and t.answer == "hi  bye"
    assert [(a.kind, a.name, a.arguments) for a in t.actions] == [("check", "Pay", None), ("call", "f", {"k": 1})]
    assert not t.malformed and t.first_action.kind == "check"
    # an unclosed think is not a think: blocks inside it are actions (as sandbox.reference defines it)
    t = common.parse_turn("<think>" + P.tool_call("f", {}))
    assert t.think == "" and t.calls[0].name == "f"
    assert common.parse_turn('<tool_call>{"name": "f", "arguments": {"x": NaN}}</tool_call>').malformed


# ---------------------------------------------------------------------------------------------------- policies

def test_replay_policy(tmp_path):
    p = tmp_path / "r.jsonl"
    p.write_text('{"id": "a", "output": "A"}\n{"id": "b", "output": "B"}\n')
    pol = policies.make_policy(f"replay:{p}", "injecagent")
    assert pol([policies.Query("b", "prompt"), policies.Query("a", "prompt")]) == ["B", "A"]
    with pytest.raises(policies.PolicyError, match="no output for id 'c'"):
        pol([policies.Query("c", "prompt")])
    p.write_text('{"id": "a", "output": "A"}\n{"id": "a", "output": "B"}\n')
    with pytest.raises(policies.PolicyError, match="line 2 repeats id 'a'"):
        policies.replay_policy(p)
    p.write_text('{"id": "a"}\n')
    with pytest.raises(policies.PolicyError, match="line 1 must be"):
        policies.replay_policy(p)


def test_unknown_specs():
    with pytest.raises(policies.PolicyError, match="unknown policy 'gpt'"):
        policies.make_policy("gpt", "injecagent")
    with pytest.raises(policies.PolicyError, match="has no scripted behaviours"):
        policies.make_policy("oracle", "no_such_suite")
    with pytest.raises(policies.PolicyError, match="needs the model it guards"):
        policies.make_policy("prompt_guard", "injecagent")
    for guarded in ("oracle", "replay:f.jsonl"):
        with pytest.raises(policies.PolicyError, match=f"policy 'prompt_guard:{guarded}': prompt_guard: adds a "
                           f"system prompt, so it guards a model .* not '{guarded.partition(':')[0]}'"):
            policies.make_policy(f"prompt_guard:{guarded}", "injecagent")


class Echo:
    """A fake model that answers each prompt with its system message."""

    def __init__(self, arg, config, lora_scale=1.0):
        self.arg, self.config, self.lora_scale = arg, config, lora_scale

    def generate(self, prompts):
        return [p.split(P.IM_END)[0] for p in prompts]


def test_model_policies_and_prompt_guard():
    policies.register_model_policy("echo", Echo)
    prompt = P.chat_prefix("SYS", "hello")
    q = [policies.Query("0", prompt)]
    assert policies.make_policy("echo:x", "any", {"t": 1})(q) == ["<|im_start|>system\nSYS"]
    guarded = policies.make_policy("prompt_guard:echo:x", "any")(q)
    assert guarded == [f"<|im_start|>system\nSYS\n\n{policies.SAFETY_SYSTEM_PROMPT}"]
    assert policies.add_safety_prompt(prompt).endswith(P.IM_END + "\n<|im_start|>user\nhello<|im_end|>\n"
                                                       + P.ASSISTANT_HEADER)
    bare = "<|im_start|>user\nhi<|im_end|>\n"
    assert policies.add_safety_prompt(bare) == f"<|im_start|>system\n{policies.SAFETY_SYSTEM_PROMPT}<|im_end|>\n{bare}"
    with pytest.raises(ValueError, match="prefix"):
        policies.register_model_policy("a:b", Echo)


def test_suite_registry():
    assert {"injecagent", "bfcl", "agent_safetybench"} <= set(evals.SUITES)
    calls = []
    evals.register_suite("toy", lambda spec, args: calls.append((spec, args)) or ({"m": 1.0}, []))
    assert evals.SUITES["toy"]("oracle", common.RunArgs(limit=3)) == ({"m": 1.0}, [])
    assert calls == [("oracle", common.RunArgs(limit=3))]
    del evals.SUITES["toy"]
