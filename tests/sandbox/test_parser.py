"""The streaming turn parser (`sandbox.parser`) against its definition (`sandbox.reference`).

Crafted turns pin the semantics to exact values; property tests check that the jitted, vmapped parser agrees with
the reference field for field on >10,000 random and hostile byte strings (evaluated in large batches, one compile).
"""
import functools
import json
import random
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from sandbox import parser
from sandbox.reference import (KIND_ARRAY, KIND_BOOL, KIND_INTEGER, KIND_NULL, KIND_NUMBER, KIND_OBJECT,
                               KIND_STRING, Caps, parse_turn, turn_to_dict)

L = 512  # padded turn length of the batched tests
TINY = Caps(C=2, A=2, NB=5, KB=3, VB=4, depth=3)  # small capacities, so truncation and overflow paths are common


@functools.lru_cache(maxsize=None)
def _batched(caps: Caps):
    return jax.jit(jax.vmap(lambda d, n: parser.parse(d, n, caps)))


def _pack(strs, length=L):
    arr = np.zeros((len(strs), length), np.uint8)
    for i, s in enumerate(strs):
        arr[i, :len(s)] = np.frombuffer(s, np.uint8)
    return arr, np.array([len(s) for s in strs], np.int32)


def parse_many(strs, caps=Caps()) -> list[dict]:
    out = jax.device_get(_batched(caps)(*_pack(strs)))
    return [turn_to_dict(jax.tree.map(lambda x: x[i], out)) for i in range(len(strs))]


def assert_agree(strs, caps=Caps()):
    for s, got in zip(strs, parse_many(strs, caps)):
        want = parse_turn(s, caps)
        if got != want:
            diff = {k: (got[k], want[k]) for k in want if got[k] != want[k]}
            pytest.fail(f"parser != reference on {s!r}\n(parser, reference) per field: {diff}")


def parse1(data: bytes, caps=Caps()) -> dict:
    """Both parsers on one turn; they must agree; returns the common dict."""
    assert len(data) <= L
    assert_agree([data], caps)
    return parse_turn(data, caps)


def call(name, arguments, **kw) -> bytes:
    return b"<tool_call>" + json.dumps({"name": name, "arguments": arguments}, **kw).encode() + b"</tool_call>"


THINK = b"<think>user wants balance</think>"


# ---------------------------------------------------------------------------------------------- crafted turns
def test_valid_single_call():
    d = parse1(THINK + call("bank_get_balance", {"account": "checking", "limit": 10, "rate": 1.5, "all": True,
                                                 "since": None, "tags": ["a"]}))
    assert d["think_ok"] and not d["has_text"] and not d["malformed"] and not d["has_check"]
    assert d["n_calls"] == 1 and d["call_valid"] == [True, False, False, False]
    assert d["call_name"][0] == b"bank_get_balance" and d["call_name_len"][0] == 16
    assert d["arg_count"][0] == 6
    assert d["arg_key"][0] == [b"account", b"limit", b"rate", b"all", b"since", b"tags"]
    assert d["arg_val"][0] == [b"checking", b"10", b"1.5", b"true", b"", b""]
    assert d["arg_kind"][0][:6] == [KIND_STRING, KIND_INTEGER, KIND_NUMBER, KIND_BOOL, KIND_NULL, KIND_ARRAY]


def test_valid_call_fields_exact():
    d = parse1(THINK + call("t", {"account": "checking", "n": -0, "x": 2.50, "ok": False, "o": {"a": [1]}}))
    assert d["call_valid"][0] and d["arg_count"][0] == 5
    assert d["arg_key"][0] == [b"account", b"n", b"x", b"ok", b"o", b""]
    assert d["arg_kind"][0] == [KIND_STRING, KIND_INTEGER, KIND_NUMBER, KIND_BOOL, KIND_OBJECT, 0]
    assert d["arg_val"][0] == [b"checking", b"0", b"2.5", b"false", b"", b""]
    assert d["arg_val_len"][0] == [8, 1, 3, 5, 0, 0]
    d = parse1(b'<think></think><tool_call>{"name":"t","arguments":{"a":-0,"b":1.50,"c":2E+3,"d":null}}</tool_call>')
    assert d["arg_val"][0][:4] == [b"-0", b"1.50", b"2E+3", b""]  # literal text, as written
    assert d["arg_kind"][0][:4] == [KIND_INTEGER, KIND_NUMBER, KIND_NUMBER, KIND_NULL]


def test_parallel_calls_and_whitespace_between():
    d = parse1(THINK + b"\n" + call("a", {"k": "v"}) + b" \n\t" + call("b", {}) + b"\n")
    assert d["n_calls"] == 2 and d["call_valid"] == [True, True, False, False]
    assert d["call_name"][:2] == [b"a", b"b"] and not d["has_text"] and not d["malformed"]
    assert d["arg_count"][:2] == [1, 0]


def test_check_block():
    d = parse1(THINK + b"<tool_check> send_money \n</tool_check>")
    assert d["has_check"] and d["n_checks"] == 1 and d["check_name"] == b"send_money" and d["check_name_len"] == 10
    assert d["n_calls"] == 0 and not d["has_text"] and not d["malformed"]
    d = parse1(THINK + b"<tool_check>a</tool_check><tool_check>b</tool_check>")
    assert d["n_checks"] == 2 and d["check_name"] == b"a" and d["malformed"]
    d = parse1(THINK + b"<tool_check>\x0b\x0c x y \r</tool_check>")
    assert d["check_name"] == b"x y"
    d = parse1(THINK + b"<tool_check>" + b"n" * 60 + b"</tool_check>")
    assert d["check_name"] == b"n" * 48 and d["check_name_len"] == 60


def test_refusal_text():
    d = parse1(THINK + b"I can't help with that.")
    assert d["has_text"] and d["n_calls"] == 0 and not d["has_check"] and not d["malformed"] and d["think_ok"]
    d = parse1(b"")
    assert not d["has_text"] and not d["think_ok"] and d["n_calls"] == 0


def test_think_rules():
    body = call("a", {})
    d = parse1(body)
    assert not d["think_ok"] and d["call_valid"][0] and not d["has_text"]
    d = parse1(b" " + THINK + body)  # <think> must be at byte 0: the think is text
    assert not d["think_ok"] and d["has_text"] and d["call_valid"][0]
    d = parse1(b"<think>abc" + body)  # never closed: the whole turn is the action region
    assert not d["think_ok"] and d["has_text"] and d["n_calls"] == 1
    d = parse1(b"<think>" + body + b"</think>done")  # blocks inside a closed think are thoughts
    assert d["think_ok"] and d["n_calls"] == 0 and d["has_text"]
    d = parse1(b"<think></think></think>")  # only the first </think> closes
    assert d["think_ok"] and d["has_text"]
    d = parse1(b"<think></think>")
    assert d["think_ok"] and not d["has_text"]


def test_unclosed_and_partial_tags():
    d = parse1(THINK + b'<tool_call>{"name": "a", "arguments": {}}')
    assert d["unclosed"] and d["malformed"] and d["n_calls"] == 0 and not d["has_text"]
    d = parse1(THINK + b"<tool_check>x</tool_chec")
    assert d["unclosed"] and d["n_checks"] == 0
    d = parse1(THINK + b"<tool_c")  # a partial tag at the end is text
    assert d["has_text"] and not d["unclosed"]
    d = parse1(THINK + b"<tool_c<tool_call>" + b'{"name":"a","arguments":{}}</tool_call>')
    assert d["has_text"] and d["call_valid"][0]
    d = parse1(THINK + b"<<tool_check>x</tool_check>")
    assert d["has_text"] and d["check_name"] == b"x"


def test_nested_tags():
    inner = b'{"name": "a", "arguments": {}}'
    d = parse1(THINK + b"<tool_call><tool_call>" + inner + b"</tool_call></tool_call>")
    assert d["n_calls"] == 1 and d["call_valid"][0] is False and d["has_text"]  # second </tool_call> is text
    d = parse1(THINK + b'<tool_call>{"name": "a", "arguments": {"q": "</tool_call>"}}</tool_call>')
    assert d["n_calls"] == 1 and not d["call_valid"][0] and d["has_text"]  # the string's </tool_call> ends the block
    d = parse1(THINK + b'<tool_call>{"name": "a", "arguments": {"q": "<tool_call>x</tool_check>"}}</tool_call>')
    assert d["call_valid"][0] and d["arg_val"][0][0] == b"<tool_call>x</tool_check>"
    d = parse1(THINK + b"<tool_check><tool_call>x</tool_check>")
    assert d["check_name"] == b"<tool_call>x" and d["n_calls"] == 0


@pytest.mark.parametrize("content", [
    b"", b"   ", b"{}", b"[]", b'"x"', b"1", b'{"name": "a"}', b'{"arguments": {}}', b'{"name": 1, "arguments": {}}',
    b'{"name": "a", "arguments": []}', b'{"name": "a", "arguments": "x"}', b'{"name": "a", "arguments": {},}',
    b"{'name': 'a', 'arguments': {}}", b'{"name": "a", "arguments": {}} x', b'{"name": "a", "arguments": {}}}',
    b'{"name": "a" "arguments": {}}', b'{"name": "a", "arguments": {"x": 01}}', b'{"name": "a", "arguments": {"x": 1.}}',
    b'{"name": "a", "arguments": {"x": .5}}', b'{"name": "a", "arguments": {"x": 1e}}', b'{"name": "a", "arguments": {"x": tru}}',
    b'{"name": "a", "arguments": {"x": True}}', b'{"name": "a", "arguments": {"x": "\\x41"}}',
    b'{"name": "a", "arguments": {"x": "\\u12G4"}}', b'{"name": "a", "arguments": {"x": "a\nb"}}',
    b'{"name": "a", "arguments": {"x": NaN}}', b'{"name": "a", "arguments": {"x": Infinity}}',
    b'{"name": "a", "arguments": {"x": -Infinity}}', b'{"name": "a\xff", "arguments": {}\xff}',
    b'{"name": "a", "arguments": {"x": [1, 2,]}}', b'\x0c{"name": "a", "arguments": {}}',
])
def test_bad_json_is_an_invalid_call(content):
    d = parse1(THINK + b"<tool_call>" + content + b"</tool_call>")
    assert d["n_calls"] == 1 and d["call_valid"] == [False] * 4 and d["call_overflow"] == [False] * 4
    assert d["call_name"][0] == b"" and d["arg_count"][0] == 0


def test_json_edges_that_are_valid():
    d = parse1(THINK + b'<tool_call> \r\n\t{ "name" :"a" , "arguments" : { "x" : 1e999 , "y": -1E-400} }\n</tool_call>')
    assert d["call_valid"][0] and d["arg_val"][0][:2] == [b"1e999", b"-1E-400"]
    d = parse1(THINK + b'<tool_call>{"name": "a", "arguments": {}, "extra": [1, {"b": null}]}</tool_call>')
    assert d["call_valid"][0]


def test_duplicate_keys_last_wins():
    d = parse1(THINK + b'<tool_call>{"name": "a", "name": "b", "arguments": {"x": 1, "y": 2, "x": "z"}}</tool_call>')
    assert d["call_name"][0] == b"b" and d["arg_count"][0] == 2
    assert d["arg_key"][0][:2] == [b"x", b"y"] and d["arg_val"][0][:2] == [b"z", b"2"]
    assert d["arg_kind"][0][:2] == [KIND_STRING, KIND_INTEGER]
    d = parse1(THINK + b'<tool_call>{"arguments": {"a": 1}, "name": "t", "arguments": {"b": true}}</tool_call>')
    assert d["arg_count"][0] == 1 and d["arg_key"][0][0] == b"b" and d["arg_val"][0][0] == b"true"
    d = parse1(THINK + b'<tool_call>{"name": "t", "arguments": {}, "name": 5}</tool_call>')
    assert not d["call_valid"][0]
    d = parse1(THINK + b'<tool_call>{"name": "t", "arguments": {}, "arguments": null}</tool_call>')
    assert not d["call_valid"][0]


def test_escapes():
    d = parse1(THINK + b'<tool_call>{"n\\u0061me": "a\\u0042", "arguments": '
               b'{"k": "\\"\\\\\\/\\b\\f\\n\\r\\t\\u0000x"}}</tool_call>')
    assert d["call_valid"][0] and d["call_name"][0] == b"aB"
    assert d["arg_val"][0][0] == b'"\\/\b\f\n\r\t\x00x'


@pytest.mark.parametrize("raw,canon", [
    ("é".encode(), b"\xff\xff"), (b"\\u00e9", b"\xff"), (b"\\ud83d\\ude00", b"\xff"), ("😀".encode(), b"\xff" * 4),
    (b"\\ud800", b"\xff"), (b"\\udc00\\ud800", b"\xff\xff"), (b"\\ud800\\u0041", b"\xffA"),
    (b"\\ud800\\ud800\\udc00", b"\xff\xff"), (b"\xff\x80", b"\xff\xff"), (b"\x7f", b"\x7f"),
])
def test_unicode_canonical_bytes(raw, canon):
    d = parse1(THINK + b'<tool_call>{"name": "' + raw + b'", "arguments": {"k": "' + raw + b'"}}</tool_call>')
    assert d["call_valid"][0] and d["call_name"][0] == canon and d["arg_val"][0][0] == canon


def test_invalid_utf8_outside_json_is_fine():
    d = parse1(b"<think>\xff\xfe</think>\xc3(" + call("a", {}))
    assert d["think_ok"] and d["has_text"] and d["call_valid"][0]


def test_huge_values_are_truncated_with_full_length():
    d = parse1(THINK + call("n" * 100, {"body": "b" * 300}))
    assert d["call_valid"][0] and not d["call_overflow"][0]
    assert d["call_name"][0] == b"n" * 48 and d["call_name_len"][0] == 100
    assert d["arg_val"][0][0] == b"b" * 48 and d["arg_val_len"][0][0] == 300


def test_argument_overflow():
    seven = {f"k{i}": i for i in range(7)}
    d = parse1(THINK + call("a", seven))
    assert d["call_overflow"][0] and not d["call_valid"][0] and d["arg_count"][0] == 0
    six_with_dup = b'{"name": "a", "arguments": {' + b", ".join(b'"k%d": %d' % (i % 6, i) for i in range(9)) + b"}}"
    d = parse1(THINK + b"<tool_call>" + six_with_dup + b"</tool_call>")
    assert d["call_valid"][0] and d["arg_count"][0] == 6 and d["arg_val"][0][:3] == [b"6", b"7", b"8"]
    d = parse1(THINK + call("a", {"k" * 33: 1}))
    assert d["call_overflow"][0]
    d = parse1(THINK + call("a", {"k" * 32: 1}))
    assert d["call_valid"][0] and d["arg_key_len"][0][0] == 32
    d = parse1(THINK + call("a", {"ké": 1}, ensure_ascii=False))
    assert d["call_overflow"][0]
    d = parse1(THINK + call("a", {"nested": {f"k{i}": i for i in range(20)}}))  # only top-level entries count
    assert d["call_valid"][0] and d["arg_kind"][0][0] == KIND_OBJECT


def test_too_many_calls():
    d = parse1(THINK + b"".join(call(f"t{i}", {}) for i in range(6)))
    assert d["n_calls"] == 6 and d["too_many_calls"] and d["malformed"]
    assert d["call_valid"] == [True] * 4 and d["call_name"] == [b"t0", b"t1", b"t2", b"t3"]


def test_depth_limit():
    def nest(k):
        return "[" * (k - 2) + "1" + "]" * (k - 2)
    ok = THINK + b'<tool_call>{"name": "a", "arguments": {"x": ' + nest(8).encode() + b"}}</tool_call>"
    deep = THINK + b'<tool_call>{"name": "a", "arguments": {"x": ' + nest(9).encode() + b"}}</tool_call>"
    assert parse1(ok)["call_valid"][0] and not parse1(deep)["call_valid"][0]
    d = parse1(THINK + b"<tool_call>" + b"[" * 300 + b"</tool_call>")
    assert d["n_calls"] == 1 and not d["call_valid"][0]


# ------------------------------------------------------------------------------- random and hostile turns
TAGS = [b"<think>", b"</think>", b"<tool_call>", b"</tool_call>", b"<tool_check>", b"</tool_check>"]
PARTIAL = [t[:k] for t in TAGS for k in range(1, len(t))]
JSON_BITS = [b"{", b"}", b"[", b"]", b":", b",", b'"', b"\\", b'\\"', b"\\\\", b"\\u", b"\\u00e9", b"\\u0041",
             b"\\ud83d", b"\\ude00", b"\\uDC00", b"\\uD800\\u", b"\\n", b"\\/", b"\\x", b"\\u12", b"0", b"-", b"-0",
             b"1.5", b"1.", b".5", b"e", b"E+", b"1e5", b"01", b"true", b"tru", b"false", b"null", b"nul", b"NaN",
             b"Infinity", b"-Infinity", b'"name"', b'"arguments"', b'"n\\u0061me"', b'"name": "x"',
             b'"arguments": {}', b'{"name": "t", "arguments": {', b"}}", b'"k": "v"', b", "]
WS = [b" ", b"\n", b"\t", b"\r", b"\x0b", b"\x0c", b"  \n"]
ODD = ["é".encode(), "😀".encode(), b"\xff", b"\x00", b"\x1f", b"\x7f", b"\x80", b"\xc3", b"\xed\xa0\x80"]
FRAGMENTS = TAGS + PARTIAL + JSON_BITS + WS + ODD
NAMES = ["bank_get_balance", "send_email", "t", "name", "arguments", "", "n" * 60, "tool-é", "n\x00m", "a\"b"]
KEYS = ["account", "to", "amount", "body", "k", "x", "y", "", "name", "arguments", "é", "k" * 40, "a b", "\u2603"]


def _jstr(rng, s):
    """A JSON string literal for `s` with randomly chosen escapes (surrogate pairs for astral characters)."""
    out = ['"']
    for ch in s:
        o, r = ord(ch), rng.random()
        if ch in '"\\' or o < 0x20 or r < 0.12:
            if ch in '"\\/' and r < 0.5:
                out.append("\\" + ch)
            elif ch in "\b\f\n\r\t" and r < 0.5:
                out.append(json.dumps(ch)[1:-1])
            elif o > 0xFFFF:
                o -= 0x10000
                out.append(f"\\u{0xD800 + (o >> 10):04x}\\u{0xDC00 + (o & 0x3FF):04X}")
            else:
                out.append(f"\\u{o:04x}" if rng.random() < 0.5 else f"\\u{o:04X}")
        else:
            out.append(ch)
    return "".join(out) + '"'


def _ws(rng):
    return "" if rng.random() < 0.6 else rng.choice([" ", "\n", "\t", "\r", "  ", " \r\n "])


def _jnum(rng):
    return rng.choice(["0", "-0", "12", "-7", "1.50", "2E+3", "1e-7", "3.25e10", "-0.0", "9" * 60,
                       str(rng.randint(-10**6, 10**6)), repr(rng.uniform(-1e3, 1e3))])


def _jvalue(rng, depth):
    r = rng.random()
    if depth > 0 and r < 0.15:
        return "[" + _ws(rng) + ("," + _ws(rng)).join(_jvalue(rng, depth - 1) for _ in range(rng.randint(0, 3))) + "]"
    if depth > 0 and r < 0.25:
        return _jobj(rng, [(rng.choice(KEYS), _jvalue(rng, depth - 1)) for _ in range(rng.randint(0, 3))])
    if r < 0.55:
        return _jstr(rng, rng.choice(["checking", "savings", "hello world", "", "tab\there", 'q"s', "b\\s", "é",
                                      "😀", "\ud800", "x" * 70, "</tool_call>", "<tool_call>", "l\nb", "\x00"]))
    if r < 0.8:
        return _jnum(rng)
    return rng.choice(["true", "false", "null"])


def _jobj(rng, pairs):
    members = ("," + _ws(rng)).join(_ws(rng) + _jstr(rng, k) + _ws(rng) + ":" + _ws(rng) + v + _ws(rng)
                                    for k, v in pairs)
    return "{" + members + _ws(rng) + "}"


def _call_json(rng) -> bytes:
    """A call's JSON, usually well-formed, with random escapes, spacing, duplicates, depth and size."""
    depth = rng.choice([1, 2, 3, 9]) if rng.random() < 0.2 else 2
    n_args = rng.choice([0, 1, 2, 2, 3, 3, 4, 6, 7])
    keys = KEYS[:7] if rng.random() < 0.7 else KEYS
    args = [(rng.choice(keys), _jvalue(rng, depth)) for _ in range(n_args)]
    if depth == 9 and rng.random() < 0.5:
        args.append(("deep", "[" * rng.randint(5, 9) + "1" + "]" * rng.randint(5, 9)))
    pairs = [("name", _jstr(rng, rng.choice(NAMES))), ("arguments", _jobj(rng, args))]
    if rng.random() < 0.3:
        pairs.append((rng.choice(["name", "arguments", "extra", "n\u0061me"]), _jvalue(rng, 2)))
    if rng.random() < 0.1:
        pairs.pop(rng.randrange(len(pairs)))
    rng.shuffle(pairs)
    return (_ws(rng) + _jobj(rng, pairs) + _ws(rng)).encode("utf-8", "surrogatepass")


def _mutate(rng, b: bytes) -> bytes:
    b = bytearray(b)
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(len(b) + 1)
        r = rng.random()
        if r < 0.4:
            b[i:i] = rng.choice(FRAGMENTS)
        elif r < 0.7:
            del b[i:i + rng.randint(1, 4)]
        else:
            b[i:i + 1] = bytes([rng.randrange(256)])
    return bytes(b)


def _soup(rng, n) -> bytes:
    return b"".join(rng.choice(FRAGMENTS) if rng.random() < 0.8 else bytes([rng.randrange(256)]) for _ in range(n))


def random_turn(rng: random.Random) -> bytes:
    """A turn mixing think, call and check blocks (valid, near-valid, unclosed), text and fragment soup."""
    parts = []
    r = rng.random()
    if r < 0.6:
        parts.append(b"<think>" + _soup(rng, rng.randint(0, 3)) + (b"</think>" if rng.random() < 0.85 else b""))
    elif r < 0.7:
        parts.append(_soup(rng, 2))
    for _ in range(rng.choice([0, 1, 1, 1, 2, 3, 5])):
        r = rng.random()
        if r < 0.45:
            body = _call_json(rng)
            if rng.random() < 0.3:
                body = _mutate(rng, body)
            parts.append(b"<tool_call>" + body + (b"</tool_call>" if rng.random() < 0.95 else b""))
        elif r < 0.6:
            parts.append(b"<tool_check>" + rng.choice([b"send_money", b" x ", b"", b"\n a b \x0c", b"\xff" * 50]) +
                         (b"</tool_check>" if rng.random() < 0.95 else b""))
        elif r < 0.75:
            parts.append(rng.choice(WS) if rng.random() < 0.5 else b"I can't help with that.")
        else:
            parts.append(_soup(rng, rng.randint(1, 8)))
    if rng.random() < 0.04:  # parallel-call bursts, past the capacity C
        parts.append(b"".join(b'<tool_call>{"name":"t%d","arguments":{}}</tool_call>' % i
                              for i in range(rng.randint(3, 6))))
    out = b"".join(parts)
    return (_mutate(rng, out) if rng.random() < 0.1 else out)[:L]


_block = st.builds(lambda seed, close: b"<tool_call>" + _call_json(random.Random(seed)) + close,
                   st.integers(0, 2**32 - 1), st.sampled_from([b"</tool_call>", b"</tool_call>", b"</tool_c", b""]))
_piece = st.one_of(st.sampled_from(FRAGMENTS), st.binary(min_size=1, max_size=4), _block,
                   st.builds(lambda s: b"<tool_check>" + s + b"</tool_check>", st.binary(max_size=6)))
hypothesis_turns = st.builds(lambda think, parts: (think + b"".join(parts))[:L],
                             st.sampled_from([b"", b"<think>x</think>", b"<think>", b"<think></think>\n"]),
                             st.lists(_piece, max_size=10))


def _batch(hand, seed, size):
    rng = random.Random(seed)
    return list(hand) + [random_turn(rng) for _ in range(size - len(hand))]


# No shrinking: a failure names the offending turn itself, and shrinking 500-turn batches takes minutes.
BATCHED = dict(deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate],
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@settings(max_examples=25, **BATCHED)
@given(hand=st.lists(hypothesis_turns, max_size=40), seed=st.integers(0, 2**32 - 1))
def test_agrees_with_reference(hand, seed):
    """25 examples x 500 turns = 12,500 turns, each batch one call of the jitted, vmapped parser."""
    assert_agree(_batch(hand, seed, 500))


@settings(max_examples=8, **BATCHED)
@given(hand=st.lists(hypothesis_turns, max_size=40), seed=st.integers(0, 2**32 - 1))
def test_agrees_with_reference_tiny_caps(hand, seed):
    assert_agree(_batch(hand, seed, 500), TINY)


def test_generator_covers_the_cases():
    """The random turns reach every outcome the property test is meant to exercise."""
    rng = random.Random(0)
    ds = [parse_turn(random_turn(rng)) for _ in range(2000)]
    assert sum(any(d["call_valid"]) for d in ds) > 300
    assert sum(any(d["call_overflow"]) for d in ds) > 50
    assert sum(d["n_calls"] > 0 and not all(d["call_valid"][:d["n_calls"]]) for d in ds) > 200
    for key in ("think_ok", "has_text", "unclosed", "has_check", "malformed", "too_many_calls"):
        assert 10 < sum(d[key] for d in ds) < 1990, key
    kinds = {k for d in ds for row in d["arg_kind"] for k in row}
    assert kinds == set(range(8))
    assert any(n > 48 for d in ds for row in d["arg_val_len"] for n in row)
    assert any(0xFF in v for d in ds for row in d["arg_val"] for v in row)


# ------------------------------------------------------------------------------------ streaming and ranges
def test_token_chunks_and_single_bytes_equal_whole_turn():
    """Feeding a turn token by token (feed_bytes with ragged n) or byte by byte gives the same Turn."""
    rng = random.Random(1)
    strs = [random_turn(rng)[:200] for _ in range(64)] + [THINK + call("a", {"k": "</tool_call>"})]
    T, N = 200, 6
    chunks = np.zeros((len(strs), T, N), np.uint8)
    ns = np.zeros((len(strs), T), np.int32)
    for i, s in enumerate(strs):
        pos, t = 0, 0
        while pos < len(s):
            k = rng.randint(1, N)
            piece = s[pos:pos + k]
            chunks[i, t, :len(piece)] = np.frombuffer(piece, np.uint8)
            ns[i, t] = len(piece)
            pos, t = pos + k, t + 1

    @jax.jit
    @jax.vmap
    def by_tokens(c, n):
        return parser.finish(jax.lax.scan(lambda s, x: (parser.feed_bytes(s, *x), None), parser.init(), (c, n))[0])

    @jax.jit
    @jax.vmap
    def by_bytes(d, n):
        step = lambda s, i: (jax.tree.map(lambda a, b: jnp.where(i < n, a, b), parser.feed(s, d[i]), s), None)
        return parser.finish(jax.lax.scan(step, parser.init(), jnp.arange(d.shape[0]))[0])

    whole = jax.device_get(_batched(Caps())(*_pack(strs)))
    data, lens = _pack(strs, T)
    for other in (by_tokens(chunks, ns), by_bytes(data, lens)):
        other = jax.device_get(other)
        for name, a, b in zip(parser.Turn._fields, whole, other):
            np.testing.assert_array_equal(a, b, err_msg=name)


def test_no_input_breaks_invariants():
    """Random bytes and fragment soup: every output in range, bytes zero past their lengths."""
    rng = random.Random(2)
    strs = [bytes(rng.randrange(256) for _ in range(rng.randint(0, L))) for _ in range(150)]
    strs += [_soup(rng, rng.randint(0, 200))[:L] for _ in range(150)]
    caps = Caps()
    out = jax.device_get(_batched(caps)(*_pack(strs)))
    assert (out.n_calls >= 0).all() and (out.n_checks >= 0).all()
    assert ((out.arg_count >= 0) & (out.arg_count <= caps.A)).all()
    assert ((out.arg_kind >= 0) & (out.arg_kind <= KIND_OBJECT)).all()
    for arr, n in ((out.call_name, out.call_name_len), (out.arg_key, out.arg_key_len), (out.arg_val, out.arg_val_len),
                   (out.check_name, out.check_name_len)):
        assert (n >= 0).all()
        assert (np.where(np.arange(arr.shape[-1]) >= np.minimum(n, arr.shape[-1])[..., None], arr, 0) == 0).all()
    assert (out.call_valid <= (np.arange(caps.C) < out.n_calls[:, None])).all()
    assert not (out.call_valid & out.call_overflow).any()
    assert (out.malformed == (out.unclosed | out.too_many_calls | (out.n_checks > 1))).all()
    assert_agree(strs)


def test_jit_shapes_and_dtypes():
    turn = jax.jit(parser.parse)(*(_pack([THINK + call("a", {"k": 1})])[0][0], 60))
    c = Caps()
    assert turn.call_name.shape == (c.C, c.NB) and turn.call_name.dtype == jnp.uint8
    assert turn.arg_key.shape == (c.C, c.A, c.KB) and turn.arg_val.shape == (c.C, c.A, c.VB)
    assert turn.arg_kind.shape == (c.C, c.A) and turn.arg_kind.dtype == jnp.int32
    assert turn.think_ok.shape == () and turn.think_ok.dtype == jnp.bool_


def test_state_is_a_pytree_with_static_caps():
    """The env selects between states with tree_map (e.g. reset at end of turn); caps ride in the tree structure."""
    a, b = parser.init(TINY), jax.jit(parser.feed)(parser.init(TINY), jnp.uint8(ord("<")))
    mixed = jax.tree.map(lambda x, y: jnp.where(True, x, y), b, a)
    assert mixed.caps == TINY and jax.tree.structure(mixed) == jax.tree.structure(a)
    assert int(mixed.think) == 0 and int(mixed.tm) == 1
    with pytest.raises(ValueError, match="capacity"):
        parser.init(Caps(C=0))


@pytest.mark.slow
def test_throughput():
    """Bytes/s of the jitted vmapped parser at batch 1024 vs the reference (printed; run with -s)."""
    rng = random.Random(3)
    strs = [random_turn(rng) for _ in range(1024)]
    n_bytes = sum(map(len, strs))
    f = _batched(Caps())
    data, lens = _pack(strs)
    jax.block_until_ready(f(data, lens))
    t0 = time.perf_counter()
    for _ in range(3):
        jax.block_until_ready(f(data, lens))
    jit_s = (time.perf_counter() - t0) / 3
    t0 = time.perf_counter()
    for s in strs:
        parse_turn(s)
    ref_s = time.perf_counter() - t0
    print(f"\nparser (jit, vmap batch 1024, padded to {L}): {1024 * L / jit_s / 1e6:.2f} MB/s padded, "
          f"{n_bytes / jit_s / 1e6:.2f} MB/s of turn bytes; reference: {n_bytes / ref_s / 1e6:.2f} MB/s "
          f"({jax.devices()[0].platform})")
