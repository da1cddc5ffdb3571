import collections
import json
import re
import time

import pytest

from sandbox import catalogue as cat
from sandbox import generate as gen
from sandbox.spec import INJECTION_STYLES, KINDS, NO_TOOL, SPLITS


@pytest.fixture(scope="module")
def full():
    """The default-size splits for seed 0, and how long generating train took."""
    t0 = time.perf_counter()
    train = gen.generate(0, "train")
    seconds = time.perf_counter() - t0
    return {"train": train, "heldout": gen.generate(0, "heldout"), "train_seconds": seconds}


def _bytes(specs):
    return "\n".join(gen.spec_json(s) for s in specs).encode()


def test_same_seed_same_bytes_different_seed_differs():
    a, b, c = gen.generate(7, "train", 550), gen.generate(7, "train", 550), gen.generate(8, "train", 550)
    assert _bytes(a) == _bytes(b)
    assert _bytes(a) != _bytes(c)
    assert _bytes(gen.generate(7, "heldout", 110)) == _bytes(gen.generate(7, "heldout", 110))
    # a shorter run is a prefix of a longer one with the same seed
    assert _bytes(gen.generate(7, "train", 100)) == _bytes(a[:100])


def test_scale_and_speed(full):
    stats = gen.scenario_stats(full["train"])
    assert stats["distinct_prompts"] == stats["n"] >= 20_000
    assert stats["distinct_responses"] >= 5_000
    assert full["train_seconds"] < 20


def test_every_cell_in_both_splits_balanced_over_domains(full):
    cells = {f"{u}/{t}" for u in KINDS for t in KINDS} | {"benign/none", "malicious/none"}
    for split in SPLITS:
        specs = full[split]
        per = collections.Counter((s.user_kind, s.tool_kind, s.domain) for s in specs)
        assert set(gen.scenario_stats(specs)["cells"]) == cells
        assert len(per) == len(cells) * len(cat.DOMAINS)
        assert max(per.values()) - min(per.values()) <= 1, split
        styles = collections.Counter(s.injection_style for s in specs if s.tool_kind == "malicious")
        assert set(styles) == set(INJECTION_STYLES)


def test_splits_are_disjoint(full):
    train, held = full["train"], full["heldout"]
    assert not {s.family for s in train} & {s.family for s in held}
    train_tools = {t for s in train for t in s.tools}
    held_tools = {t for s in held for t in s.tools}
    assert not train_tools & held_tools
    assert held_tools == set(cat.HELDOUT_TOOLS)
    assert not train_tools & cat.HELDOUT_TOOLS
    assert not {s.user_prompt for s in train} & {s.user_prompt for s in held}
    assert all(s.split == "train" for s in train) and all(s.split == "heldout" for s in held)
    assert len({s.id for s in train + held}) == len(train) + len(held)


def _check_args(tool, args):
    assert set(tool.required) <= set(args) <= {p.name for p in tool.params}, (tool.name, args)
    for p in tool.params:
        if p.name in args:
            v = args[p.name]
            ok = {"string": isinstance(v, str), "boolean": isinstance(v, bool),
                  "integer": isinstance(v, int) and not isinstance(v, bool),
                  "number": isinstance(v, (int, float)) and not isinstance(v, bool)}[p.type]
            assert ok and (not p.enum or v in p.enum), (tool.name, p.name, v)
            if isinstance(v, str):
                assert not set(v) & set("\"'\\") and v.isascii() and v.isprintable()


@pytest.mark.parametrize("split", SPLITS)
def test_scenario_invariants(full, split):
    for s in full[split]:
        assert gen.MIN_TOOLS <= len(s.tools) <= gen.MAX_TOOLS and len(set(s.tools)) == len(s.tools)
        assert all((t in cat.HELDOUT_TOOLS) == (split == "heldout") for t in s.tools)
        assert len(s.user_prompt.split()) <= 30, s.user_prompt
        assert (s.refusal != "") == (s.user_kind == "malicious") and (s.final_answer != "") != (s.refusal != "")
        assert len((s.final_answer or s.refusal).split()) <= 30
        if s.tool_kind == NO_TOOL:
            assert s.task_call is s.tool_response is s.followup_call is s.followup_response is None
            assert s.user_kind in ("benign", "malicious")
            continue
        task = cat.CATALOGUE[s.task_call.name]
        assert task.name in s.tools and task.domain == s.domain
        _check_args(task, s.task_call.args)
        for v in s.task_call.args.values():  # a model can copy every expected argument from the prompt
            assert cat.fmt_value(v) in s.user_prompt, (s.user_prompt, s.task_call)
        if s.user_kind == "benign":
            assert not task.sensitive
        elif s.user_kind == "sensitive":
            assert task.sensitive
        assert len(s.tool_response.split()) <= 50, s.tool_response
        assert task.respond(s.task_call.args) in s.tool_response
        if s.tool_kind == "benign":
            assert s.followup_call is s.followup_response is s.injection_style is None
            continue
        follow = cat.CATALOGUE[s.followup_call.name]
        assert follow.sensitive and follow.name in s.tools and follow.name != task.name
        _check_args(follow, s.followup_call.args)
        assert follow.name in s.tool_response
        for v in s.followup_call.args.values():
            assert cat.fmt_value(v) in s.tool_response
        assert s.followup_response == follow.respond(s.followup_call.args)
        assert (s.injection_style in INJECTION_STYLES) == (s.tool_kind == "malicious")
        if s.tool_kind == "sensitive":
            assert s.injection_style is None


def test_no_tool_answers_are_correct(full):
    checked = 0
    for s in full["train"] + full["heldout"]:
        if s.tool_kind != NO_TOOL or s.user_kind != "benign":
            continue
        m = re.fullmatch(r"What is (\d+) (plus|minus|times) (\d+)\?", s.user_prompt)
        if m:
            a, op, b = int(m[1]), m[2], int(m[3])
            assert s.final_answer == f"{a} {op} {b} is {dict(plus=a + b, minus=a - b, times=a * b)[op]}."
            checked += 1
        m = re.fullmatch(r"What is (\d+) squared\?", s.user_prompt)
        if m:
            assert s.final_answer == f"{m[1]} squared is {int(m[1]) ** 2}."
            checked += 1
    assert checked > 100


def test_stats_and_corpus():
    specs = gen.generate(1, "train", 220)
    stats = gen.scenario_stats(specs)
    assert stats["n"] == 220 and all(v == 20 for v in stats["cells"].values())
    assert all(v == 22 for v in stats["domains"].values())
    texts = list(gen.corpus(1, 220))
    assert texts == list(gen.corpus(1, 220))
    assert all(isinstance(t, str) and t for t in texts)
    assert all(any(s.user_prompt in t for t in texts) for s in specs)  # inside the rendered prompts
    assert any(t.startswith("bank_transfer(") for t in texts)  # compact schema lines
    assert not any(name in t for t in texts for name in cat.HELDOUT_TOOLS)  # train material only


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="unknown split 'test'"):
        gen.generate(0, "test")
    with pytest.raises(ValueError, match="n must be >= 0"):
        gen.generate(0, "train", -1)
    with pytest.raises(ValueError, match="ran out of distinct prompts"):
        gen.generate(0, "heldout", 200_000)


def test_cli_prints_json_lines(capsys):
    gen.main(["--split", "heldout", "--n", "5", "--seed", "0"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 5
    assert [json.loads(l)["id"] for l in lines] == [s.id for s in gen.generate(0, "heldout", 5)]


def test_same_bytes_across_processes():
    """No dependence on string hashing or set order: two interpreters with different hash seeds agree."""
    import os
    import subprocess
    import sys

    outs = []
    for hash_seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        outs.append(subprocess.run([sys.executable, "-m", "sandbox.generate", "--n", "300", "--seed", "4"],
                                   env=env, capture_output=True, check=True, timeout=120).stdout)
    assert outs[0] == outs[1] and len(outs[0].splitlines()) == 300
