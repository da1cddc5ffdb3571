"""Variants side by side: the results file's rules (what is kept, what is dropped, what is refused) and
launch/compare.py end to end on scripted policies, re-run without evaluating again."""
import json
import pathlib
import subprocess
import sys

import pytest

from agent_rl.evals import common, compare

ROOT = pathlib.Path(__file__).resolve().parents[2]
S1 = compare.settings_key(common.RunArgs(limit=2))
S2 = compare.settings_key(common.RunArgs(limit=3))


def empty():
    return {"variants": {}, "settings": {}}


def test_record_keeps_each_variant_and_suite():
    r = empty()
    assert compare.record(r, "base", "always_execute", 1.0, "bfcl", {"non_live/overall": 0.5}, S1) == []
    assert compare.record(r, "ours", "oracle", 1.0, "bfcl", {"non_live/overall": 1.0}, S1) == []
    assert compare.record(r, "ours", "oracle", 1.0, "injecagent", {"base/total/asr_valid": 0.0}, S1) == []
    assert r["variants"]["ours"] == {"policy": "oracle", "lora_scale": 1.0, "bfcl": {"non_live/overall": 1.0},
                                     "injecagent": {"base/total/asr_valid": 0.0}}
    assert compare.has(r, "ours", "oracle", 1.0, "bfcl", S1)
    assert not compare.has(r, "ours", "oracle", 0.5, "bfcl", S1)  # another scale is another policy
    assert not compare.has(r, "ours", "oracle", 1.0, "bfcl", S2)
    assert not compare.has(r, "ours", "oracle", 1.0, "sandbox", S1)


def test_record_drops_what_is_no_longer_comparable():
    r = empty()
    compare.record(r, "a", "oracle", 1.0, "bfcl", {"non_live/overall": 1.0}, S1)
    compare.record(r, "a", "oracle", 1.0, "injecagent", {"base/total/asr_valid": 0.0}, S1)
    compare.record(r, "b", "always_refuse", 1.0, "bfcl", {"non_live/overall": 0.0}, S1)
    # a new policy for a: its other suites go
    dropped = compare.record(r, "a", "always_execute", 1.0, "bfcl", {"non_live/overall": 0.5}, S1)
    assert dropped == ["a: injecagent (policy was oracle at scale 1.0)"]
    assert set(r["variants"]["a"]) == {"policy", "lora_scale", "bfcl"}
    # new settings for bfcl: every other variant's bfcl figures go
    dropped = compare.record(r, "a", "always_execute", 1.0, "bfcl", {"non_live/overall": 0.25}, S2)
    assert dropped == [f"b: bfcl (run with {S1})"] and "bfcl" not in r["variants"]["b"]
    assert r["settings"]["bfcl"] == S2


def test_record_refuses_a_metric_outside_zero_one():
    with pytest.raises(ValueError, match="'x' = 1.5"):
        compare.record(empty(), "a", "oracle", 1.0, "bfcl", {"x": 1.5}, S1)


def test_table_rows_follow_the_order_and_columns_the_suite():
    r = empty()
    compare.record(r, "ours", "lora:m/ours", 0.5, "sandbox", {"benign_success": 0.25, "malicious_refusal": 1.0}, S1)
    compare.record(r, "base", "hf:m/base", 1.0, "sandbox", {"malicious_refusal": 0.0}, S1)
    assert compare.table(r, "sandbox", ["base", "ours"]).splitlines() == [
        "| variant | policy | malicious_refusal | benign_success |",
        "|---|---|---:|---:|",
        "| base | `hf:m/base` | 0.0 | n/a |",
        "| ours | `lora:m/ours (scale 0.5)` | 100.0 | 25.0 |"]
    assert compare.table(r, "bfcl") == ""
    text = compare.tables(r)
    assert text.startswith("### Sandbox (heldout)\n") and "Settings: limit 2, tool_style compact; figures in percent." in text


@pytest.mark.parametrize("content, where", [
    ("{", "not readable JSON"),
    ('{"runs": {}}', "expected an object with a 'variants' object"),
    ('{"variants": {"a": {"sandbox": {}}}}', "variants.a: expected an object with a 'policy' string"),
    ('{"variants": {"a": {"policy": "oracle", "bfcl": {"x": 2}}}}', "variants.a.bfcl: metric 'x' = 2"),
    ('{"variants": {"a": {"policy": "oracle", "bfcl": [1]}}}', "variants.a.bfcl:"),
])
def test_a_bad_results_file_is_one_line_naming_it(tmp_path, content, where):
    path = tmp_path / "r.json"
    path.write_text(content)
    with pytest.raises(compare.ResultsError, match=f"^{path}: ") as e:
        compare.load(path)
    assert where in str(e.value) and "\n" not in str(e.value)


def test_save_then_load_round_trips(tmp_path):
    r = empty()
    compare.record(r, "a", "oracle", 1.0, "bfcl", {"non_live/overall": 1.0}, S1)
    compare.save(tmp_path / "d" / "r.json", r)
    assert compare.load(tmp_path / "d" / "r.json") == r
    assert compare.load(tmp_path / "missing.json") == empty()


def run(*args, data):
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": "/tmp", "JAX_PLATFORMS": "cpu",
           common.ENV_VAR: str(data)}
    return subprocess.run([sys.executable, str(ROOT / "launch/compare.py"), *args], capture_output=True, text=True,
                          env=env, timeout=300)


def test_compare_cli_scores_variants_and_resumes(benchdata, tmp_path):
    out, md = tmp_path / "results.json", tmp_path / "tables.md"
    args = ["--out", str(out), "--markdown", str(md), "--suites", "injecagent,agent_safetybench", "--limit", "3",
            "--variant", "no_defense=always_execute", "--variant", "refuser=always_refuse",
            "--variant", "ceiling=oracle"]
    r = run(*args, data=benchdata)
    assert r.returncode == 0, r.stderr
    v = json.loads(out.read_text())["variants"]
    assert v["no_defense"]["policy"] == "always_execute"
    assert v["no_defense"]["injecagent"]["base/total/asr_valid"] == 1.0
    assert v["ceiling"]["injecagent"]["enhanced/total/asr_valid"] == 0.0
    assert v["no_defense"]["agent_safetybench"]["proxy/safe_rate"] == 0.0
    # the same figures as launch/eval.py's for the same policy and limit
    single = tmp_path / "single.json"
    e = subprocess.run([sys.executable, str(ROOT / "launch/eval.py"), "--suite", "agent_safetybench", "--policy",
                        "oracle", "--limit", "3", "--out", str(single)], capture_output=True, text=True, timeout=300,
                       env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": "/tmp", "JAX_PLATFORMS": "cpu",
                            common.ENV_VAR: str(benchdata)})
    assert e.returncode == 0, e.stderr
    assert v["ceiling"]["agent_safetybench"] == json.loads(single.read_text())
    lines = md.read_text().splitlines()
    assert [x.split(" | ")[0] for x in lines if x.startswith("| ") and "`" in x] == \
        ["| no_defense", "| refuser", "| ceiling"] * 2
    # a re-run evaluates nothing again
    again = run(*args, data=benchdata)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("already") == 6 and json.loads(out.read_text())["variants"] == v


@pytest.mark.parametrize("extra, message", [
    ([], "--variant: none given"),
    (["--variant", "a"], "--variant=a: expected NAME=VALUE"),
    (["--variant", "a=oracle", "--suites", "nope"], "--suites: unknown suite 'nope'"),
    (["--variant", "a=oracle", "--scale", "b=0.5"], "--scale b=...: no --variant named 'b'"),
    (["--variant", "a=oracle", "--scale", "a=x"], "--scale=a=x: each value must be a number"),
])
def test_compare_cli_bad_flags_are_one_line(tmp_path, extra, message):
    r = run("--out", str(tmp_path / "r.json"), *extra, data=tmp_path)
    assert r.returncode == 2 and r.stderr.startswith(f"error: {message}") and r.stderr.count("\n") == 1, r.stderr
