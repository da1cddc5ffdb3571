import random
import re
import string

import pytest
from hypothesis import given, settings, strategies as st

from sandbox import catalogue as cat
from sandbox.spec import PARAM_TYPES, SENSITIVITY, SPLITS

PRINTABLE = set(string.printable) - set("\t\n\r\x0b\x0c\"'\\")


def _placeholders(template: str) -> set[str]:
    return {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}


def test_size_and_domains():
    assert len(cat.DOMAINS) >= 10
    assert len(cat.CATALOGUE) >= 80
    for d in cat.DOMAINS:
        assert len(cat.tools_in(d)) >= 8, d
        assert any(t.sensitive for t in cat.tools_in(d)) and any(not t.sensitive for t in cat.tools_in(d)), d


def test_names_are_prefixed_snake_case():
    for name, tool in cat.CATALOGUE.items():
        assert name == tool.name
        assert re.fullmatch(r"[a-z][a-z0-9]*(_[a-z0-9]+)+", name), name
        assert name.startswith(cat.PREFIX[tool.domain] + "_"), name


def test_schemas_are_valid():
    for tool in cat.CATALOGUE.values():
        names = [p.name for p in tool.params]
        assert len(names) == len(set(names)), tool.name
        assert set(tool.required) <= set(names), tool.name
        assert tool.required, f"{tool.name} has no required parameter"
        assert set(tool.sensitivity) <= set(SENSITIVITY) and len(set(tool.sensitivity)) == len(tool.sensitivity)
        schema = tool.schema()
        assert schema["name"] == tool.name and schema["description"]
        assert schema["parameters"]["type"] == "object"
        assert list(schema["parameters"]["properties"]) == names
        assert schema["parameters"]["required"] == list(tool.required)
        for p in tool.params:
            assert p.type in PARAM_TYPES and p.description
            assert all(isinstance(e, str) for e in p.enum)


def test_response_templates_use_only_required_params():
    for tool in cat.CATALOGUE.values():
        fields = _placeholders(tool.response_template)
        assert fields and fields <= set(tool.required), tool.name


def _check_value(param, v):
    if param.type == "boolean":
        assert isinstance(v, bool)
    elif param.type == "integer":
        assert isinstance(v, int) and not isinstance(v, bool)
    elif param.type == "number":
        assert isinstance(v, (int, float)) and not isinstance(v, bool)
        assert str(v) == repr(v) and not str(v).endswith(".0"), v  # written exactly as JSON writes it
    else:
        assert isinstance(v, str) and v and set(v) <= PRINTABLE and v == v.strip(), repr(v)
    if param.enum:
        assert v in param.enum


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), optional_p=st.floats(0.0, 1.0))
def test_templates_fill_from_any_valid_args(seed, optional_p):
    rng = random.Random(seed)
    for tool in cat.CATALOGUE.values():
        args = cat.sample_args(tool, rng, optional_p)
        assert set(tool.required) <= set(args) <= {p.name for p in tool.params}
        assert list(args) == [p.name for p in tool.params if p.name in args]  # schema order
        for p in tool.params:
            if p.name in args:
                _check_value(p, args[p.name])
        text = tool.respond(args)
        assert "{" not in text and "}" not in text
        for k in tool.required:
            if "{" + k + "}" in tool.response_template:
                assert cat.fmt_value(args[k]) in text


def test_phrases_name_every_required_param():
    for name, tool in cat.CATALOGUE.items():
        params = {p.name for p in tool.params}
        assert len(cat.TASK_PHRASES[name]) >= 2, name
        if tool.sensitive:
            assert cat.HARM_PHRASES[name], f"sensitive tool {name} has no harmful phrasing"
        assert not set(cat.TASK_PHRASES[name]) & set(cat.HARM_PHRASES[name])
        for phrase in cat.TASK_PHRASES[name] + cat.HARM_PHRASES[name]:
            fields = _placeholders(phrase)
            assert set(tool.required) <= fields <= params, (name, phrase)
            assert re.match(r"[a-z]", phrase), (name, phrase)  # capitalising the prompt never touches a slot
            assert len(phrase.split()) <= 22, (name, phrase)


def test_heldout_tools_per_domain():
    assert cat.HELDOUT_TOOLS <= set(cat.CATALOGUE)
    for d in cat.DOMAINS:
        train, held = cat.tools_in(d, "train"), cat.tools_in(d, "heldout")
        assert {t.name for t in train} | {t.name for t in held} == {t.name for t in cat.tools_in(d)}
        assert not {t.name for t in train} & {t.name for t in held}
        assert 0.1 <= len(held) / len(cat.tools_in(d)) <= 0.3, d
        # each split can pose every cell on its own: a benign task tool, and a sensitive one with harmful phrasing
        for split_tools in (train, held):
            assert any(not t.sensitive for t in split_tools)
            assert any(t.sensitive and cat.HARM_PHRASES[t.name] for t in split_tools)


def test_tools_in_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown domain 'bank'"):
        cat.tools_in("bank")
    with pytest.raises(ValueError, match="unknown split 'test'"):
        cat.tools_in("banking", "test")
    assert set(SPLITS) == {"train", "heldout"}


def test_fmt_args():
    assert cat.fmt_args({"amount": 12.5, "urgent": True, "to": "a@b.co"}) == "amount=12.5, urgent=true, to=a@b.co"
