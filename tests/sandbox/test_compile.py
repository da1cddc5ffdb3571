"""The compiler: layout of the compiled arrays, what they decode to, and its errors."""
import dataclasses

import jax

import numpy as np
import pytest

from sandbox import compile as C
from sandbox import parser, protocol, scripted
from sandbox import types as T
from sandbox.catalogue import CATALOGUE
from tests.sandbox import envkit as K


@pytest.fixture(scope="module")
def compiled():
    specs = [K.spec("benign", "malicious"), K.spec("malicious", "none"), K.spec("sensitive", "sensitive")]
    return specs, K.compile_specs(specs)


def test_shapes(compiled):
    specs, sc = compiled
    sh = K.SHAPES
    assert sc.prompt.shape == (3, sh.prompt) and sc.seg.shape == (3, sh.n_segments, sh.seg)
    assert sc.script.shape == (3, len(T.POLICIES), len(T.STAGES), sh.script)
    assert sc.task_key.shape == (3, sh.args, sh.key_bytes) and sc.tool_name.shape == (3, sh.tools, sh.name_bytes)
    assert sc.shapes == sh


def test_prompt_is_left_padded_chat_prefix(compiled):
    specs, sc = compiled
    s, row, n = specs[0], np.asarray(sc.prompt[0]), int(sc.prompt_len[0])
    tools = [CATALOGUE[t].schema() for t in s.tools]
    assert K.TOK.decode(row[-n:].tolist()) == protocol.chat_prefix(protocol.system_prompt(tools), s.user_prompt)
    assert np.all(row[:-n] == K.TOK.pad_id)


def test_segments_decode_to_the_env_turn(compiled):
    specs, sc = compiled
    s = specs[0]
    seg = lambda r: K.TOK.decode(np.asarray(sc.seg[0, r, : int(sc.seg_len[0, r])]).tolist())  # noqa: E731
    assert seg(T.SEG_HEADER) + seg(T.SEG_TASK) + seg(T.SEG_FOOTER) == protocol.env_turn(
        protocol.tool_response(s.tool_response))
    assert seg(T.SEG_FOLLOWUP) == protocol.tool_response(s.followup_response)
    assert seg(T.SEG_YES) == protocol.check_result(True) and seg(T.SEG_NO) == protocol.check_result(False)
    assert int(sc.seg_len[0, T.SEG_EMPTY]) == 0
    assert int(sc.seg_len[1, T.SEG_TASK]) == 0 and int(sc.task_tool[1]) == -1  # no-tool scenario


def test_expected_arguments_match_the_parser(compiled):
    specs, sc = compiled
    s = specs[0]
    caps = C.env_caps(K.SHAPES)
    for prefix, call in (("task", s.task_call), ("followup", s.followup_call)):
        text = protocol.policy_turn("t", protocol.tool_call(call.name, call.args))[: -len(protocol.IM_END)].encode()
        data = np.zeros(256, np.uint8)
        data[: len(text)] = np.frombuffer(text, np.uint8)
        t = jax.jit(parser.parse, static_argnums=2)(data, len(text), caps)
        n = int(getattr(sc, f"{prefix}_n_args")[0])
        assert n == int(t.arg_count[0]) == len(call.arguments)
        for a in range(n):
            for f in ("key", "val"):
                ln = int(getattr(sc, f"{prefix}_{f}_len")[0, a])
                assert ln == int(getattr(t, f"arg_{f}_len")[0, a])
                np.testing.assert_array_equal(np.asarray(getattr(sc, f"{prefix}_{f}")[0, a, :ln]),
                                              np.asarray(getattr(t, f"arg_{f}")[0, a, :ln]))
            assert int(getattr(sc, f"{prefix}_kind")[0, a]) == int(t.arg_kind[0, a])
    assert int(sc.task_tool[0]) == s.tools.index(s.task_call.name)
    assert int(sc.followup_tool[0]) == s.tools.index(s.followup_call.name)
    assert list(np.asarray(sc.tool_sensitive[0, :3])) == [CATALOGUE[t].sensitive for t in s.tools]


def test_scripts_end_with_eos_and_decode(compiled):
    specs, sc = compiled
    for p in range(len(T.POLICIES)):
        for st in range(len(T.STAGES)):
            n = int(sc.script_len[2, p, st])
            row = np.asarray(sc.script[2, p, st, :n])
            assert row[-1] == K.TOK.eos_id
            assert K.TOK.decode(row[:-1].tolist()) == scripted.turns(specs[2])[p, st]


@pytest.mark.parametrize("change, field", [
    (dict(user_prompt="x" * 2000), "prompt"),
    (dict(tools=("bank_get_balance", "bank_transfer", "no_such_tool")), "not in the catalogue"),
    (dict(tools=("bank_transfer", "bank_get_statement")), "task_call tool 'bank_get_balance'"),
    (dict(tool_response="y" * 500), "env segment"),
    (dict(final_answer="z" * 400), "turn at stage"),
    (dict(user_kind="hostile"), "user_kind"),
])
def test_errors_name_the_scenario_and_field(change, field):
    s = dataclasses.replace(K.spec("benign", "malicious"), **change)
    with pytest.raises(ValueError, match=field) as e:
        K.compile_specs([s])
    assert "hand-benign-malicious" in str(e.value)


def test_argument_capacity_error():
    s = K.spec("benign", "benign")
    with pytest.raises(ValueError, match="val_bytes"):
        K.compile_specs([s], K.SHAPES._replace(val_bytes=4))
    with pytest.raises(ValueError, match="Shapes.tools"):
        K.compile_specs([s], K.SHAPES._replace(tools=2))


def test_mixed_tool_style_is_compact_or_json_per_scenario():
    """"mixed" renders each prompt in one of the two styles, fixed by the scenario's id (not by the batch it is
    compiled in), about half each; every row equals that style's compile."""
    from sandbox import generate

    specs = generate.generate(0, "train", 64)
    styles = [protocol.style_for(s.id, "mixed") for s in specs]
    assert 20 <= styles.count("json") <= 44 and set(styles) == {"compact", "json"}
    shapes = K.SHAPES._replace(prompt=4096)  # byte tokens: JSON schemas are long
    mixed = C.compile_specs(specs[:8], K.TOK, CATALOGUE, shapes, "mixed")
    alone = {style: C.compile_specs(specs[:8], K.TOK, CATALOGUE, shapes, style) for style in ("compact", "json")}
    for i, style in enumerate(styles[:8]):
        np.testing.assert_array_equal(mixed.prompt[i], alone[style].prompt[i])
    reversed_batch = C.compile_specs(specs[:8][::-1], K.TOK, CATALOGUE, shapes, "mixed")
    np.testing.assert_array_equal(reversed_batch.prompt[::-1], mixed.prompt)
    with pytest.raises(ValueError, match="unknown tool style 'yaml'"):
        protocol.style_for("x", "yaml")
