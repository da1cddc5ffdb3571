"""Reference parser of a policy turn: plain Python, the definition of what `sandbox.parser` computes.

A turn is the bytes the policy wrote before its end-of-turn token. Any byte string is legal input (invalid UTF-8
included); nothing here raises on content. The streaming parser (`sandbox.parser`) must return exactly what
`parse_turn` returns, field for field; tests check it on crafted and random turns.

The think, block and call-JSON rules (1-3 below) are those of `sandbox.turns`, the text reader every benchmark
harness scores with: this module calls its `layout` and `loads` on the bytes read as latin-1. Where the two differ:
the harnesses also cut a text at `<|im_end|>` (these bytes end before the end-of-turn token), allow
`turns.MAX_DEPTH` containers instead of `caps.depth`, and reject numbers that overflow a double (here a number is
its literal text, never evaluated).

Semantics
---------
Whitespace: "ws" is ASCII whitespace as `bytes.isspace` knows it (space, \\t, \\n, \\v, \\f, \\r); "JSON ws" is the
four bytes JSON allows (space, \\t, \\n, \\r).

1. Think. `think_ok` iff the turn starts with `<think>` at byte 0 and a `</think>` follows it (searched from byte 7).
   The action region is everything after the first such `</think>`; without a well-formed think it is the whole turn
   (so a stray `<think>` is text, and blocks inside an unclosed think are parsed as actions).
2. Blocks. The action region is scanned left to right. The leftmost `<tool_call>` or `<tool_check>` opens a block
   whose content runs to the first `</tool_call>` (resp. `</tool_check>`) after it; nothing else is recognised
   inside a block (a nested `<tool_call>` is plain content; a `</tool_call>` inside a JSON string ends the block).
   Scanning resumes after the closing tag. A block still open at the end of the turn is `unclosed` (and is not
   counted). `has_text` iff some non-ws byte of the action region lies outside every block and tag (a partial tag
   such as `<tool_c` at the very end is text).
3. Call blocks. The content, read as latin-1 (one character per byte), must be one strict JSON value with optional
   JSON ws around it: Python's `json` grammar with NaN/Infinity/-Infinity rejected, raw control bytes < 0x20
   rejected inside strings, any byte >= 0x80 allowed inside strings, and at most `caps.depth` nested containers
   (the top object counts 1). It is well-formed iff the top value is an object whose member "name" is a string and
   whose member "arguments" is an object; other members are ignored, and for a repeated key the last one wins (as
   `json` does). Only the first `caps.C` call blocks are stored; `n_calls` counts them all and
   `too_many_calls = n_calls > caps.C`.
4. Canonical bytes of a decoded JSON string: each character below 0x80 is that byte; every other character is the
   marker byte 0xFF (so a raw UTF-8 "é" is two markers, `\\u00e9` one, and a surrogate pair `\\ud83d\\ude00` that
   `json` joins into one character is one). Expected values are ASCII, so a marker never matches one.
5. Extraction per stored call. `call_name` = canonical bytes of "name". The arguments entries are the members of the
   "arguments" object in order of first appearance of each distinct key, each with the value of its last
   appearance: `arg_key` (canonical key), `arg_kind` (KIND_* below), `arg_val`: canonical bytes for strings, the
   literal text for numbers (`-0`, `1.50`, `2E+3` kept as written; `integer` iff no fraction and no exponent),
   `true`/`false` for booleans, empty for null, arrays and objects (nested values are not extracted).
6. Capacity. A name or value longer than its capacity (NB, VB) is truncated: the byte field holds the first bytes,
   the `*_len` field the full length, so comparing (bytes, len) with an expected value that fits is exact. The
   arguments must fit: more than A distinct keys, a key longer than KB, or a key with a non-ASCII character makes
   the call `call_overflow` (well-formed but not storable) and not `call_valid`.
   `call_valid = well-formed and not overflow`. Every field of a call that is not valid is zero / empty.
7. Check blocks. `n_checks` counts closed check blocks; the first one's content stripped of ws is `check_name`
   (truncated to NB, `check_name_len` is the full stripped length).
8. `malformed = unclosed or too_many_calls or n_checks > 1`.

Fields of the dict (C = caps.C, A = caps.A; byte fields are `bytes` holding the stored, possibly truncated,
prefix; lists have fixed length C, or C x A, with zero / b"" for absent entries):
  think_ok, has_text, unclosed, too_many_calls, malformed, has_check: bool; n_calls, n_checks, check_name_len: int;
  check_name: bytes; call_valid, call_overflow: [C] bool; call_name: [C] bytes; call_name_len, arg_count: [C] int;
  arg_key, arg_val: [C][A] bytes; arg_key_len, arg_kind, arg_val_len: [C][A] int.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from sandbox import protocol, turns

KIND_NONE, KIND_STRING, KIND_INTEGER, KIND_NUMBER, KIND_BOOL, KIND_NULL, KIND_ARRAY, KIND_OBJECT = range(8)
KIND_NAMES = ("none", "string", "integer", "number", "bool", "null", "array", "object")
MARKER = 0xFF  # canonical byte of any non-ASCII character


class Caps(NamedTuple):
    """Static capacities of a parsed turn."""
    C: int = 4  # call blocks stored per turn
    A: int = 6  # distinct argument keys per call
    NB: int = 48  # bytes of a tool name (calls and check)
    KB: int = 32  # bytes of an argument key
    VB: int = 48  # bytes of an argument value
    depth: int = 8  # max nested JSON containers in a call, the top object included


THINK_OPEN, THINK_CLOSE = protocol.THINK_OPEN.encode(), protocol.THINK_CLOSE.encode()
CALL_OPEN, CALL_CLOSE = protocol.CALL_OPEN.encode(), protocol.CALL_CLOSE.encode()
CHECK_OPEN, CHECK_CLOSE = protocol.CHECK_OPEN.encode(), protocol.CHECK_CLOSE.encode()


class _Obj(list):
    """A JSON object as its (key, value) pairs, duplicates kept."""


class _Num(NamedTuple):
    text: str
    kind: int


def _loads(text: str, depth: int) -> tuple[Any, str]:
    """The shared strict-JSON reader (`sandbox.turns.loads`: NaN / Infinity rejected, at most `depth` containers),
    with objects kept as member lists and numbers as their literal text (the byte parser never evaluates one)."""
    return turns.loads(text, depth, object_pairs_hook=_Obj, parse_int=lambda t: _Num(t, KIND_INTEGER),
                       parse_float=lambda t: _Num(t, KIND_NUMBER))


def canonical(s: str) -> bytes:
    return bytes(ord(c) if ord(c) < 0x80 else MARKER for c in s)


def _value(v: Any) -> tuple[int, bytes]:
    if isinstance(v, str):
        return KIND_STRING, canonical(v)
    if isinstance(v, _Num):
        return v.kind, v.text.encode()
    if isinstance(v, bool):
        return KIND_BOOL, b"true" if v else b"false"
    if v is None:
        return KIND_NULL, b""
    return (KIND_OBJECT if isinstance(v, _Obj) else KIND_ARRAY), b""


def parse_call(content: bytes, caps: Caps = Caps()) -> dict:
    """One call block's content -> {"well_formed", "overflow", "name", "args": [(key, kind, val), ...]}."""
    bad = {"well_formed": False, "overflow": False, "name": b"", "args": []}
    top, why = _loads(content.decode("latin-1"), caps.depth)
    if why or not isinstance(top, _Obj):
        return bad
    members = dict(top)
    name, arguments = members.get("name"), members.get("arguments")
    if not isinstance(name, str) or not isinstance(arguments, _Obj):
        return bad
    entries = dict(arguments)  # first-appearance order, last value
    args = [(canonical(k), *_value(v)) for k, v in entries.items()]
    overflow = len(args) > caps.A or any(len(k) > caps.KB or MARKER in k for k, _, _ in args)
    return {"well_formed": True, "overflow": overflow, "name": canonical(name), "args": args}


def parse_turn(data: bytes, caps: Caps = Caps()) -> dict:
    """The parsed turn as plain Python values (fields in the module docstring)."""
    C, A = caps.C, caps.A
    # Read as latin-1 (one character per byte, so any bytes decode): the shared layout of rules 1-2.
    lay = turns.layout(data.decode("latin-1"))
    think_ok, unclosed = lay.action_start > 0, lay.unclosed
    has_text = any(g.encode("latin-1").strip() for g in lay.gaps)  # bytes.strip: ASCII ws only
    calls = [b.raw.encode("latin-1") for b in lay.blocks if b.kind == "call"]
    checks = [b.raw.encode("latin-1") for b in lay.blocks if b.kind == "check"]

    out = {
        "think_ok": think_ok, "has_text": has_text, "unclosed": unclosed, "n_calls": len(calls),
        "too_many_calls": len(calls) > C, "n_checks": len(checks), "has_check": bool(checks),
        "call_valid": [False] * C, "call_overflow": [False] * C, "call_name": [b""] * C, "call_name_len": [0] * C,
        "arg_count": [0] * C, "arg_key": [[b""] * A for _ in range(C)], "arg_key_len": [[0] * A for _ in range(C)],
        "arg_kind": [[0] * A for _ in range(C)], "arg_val": [[b""] * A for _ in range(C)],
        "arg_val_len": [[0] * A for _ in range(C)],
    }
    for c, content in enumerate(calls[:C]):
        call = parse_call(content, caps)
        out["call_overflow"][c] = call["well_formed"] and call["overflow"]
        if not call["well_formed"] or call["overflow"]:
            continue
        out["call_valid"][c] = True
        out["call_name"][c], out["call_name_len"][c] = call["name"][:caps.NB], len(call["name"])
        out["arg_count"][c] = len(call["args"])
        for a, (key, kind, val) in enumerate(call["args"]):
            out["arg_key"][c][a], out["arg_key_len"][c][a] = key, len(key)
            out["arg_kind"][c][a] = kind
            out["arg_val"][c][a], out["arg_val_len"][c][a] = val[:caps.VB], len(val)
    name = checks[0].strip() if checks else b""
    out["check_name"], out["check_name_len"] = name[:caps.NB], len(name)
    out["malformed"] = unclosed or out["too_many_calls"] or len(checks) > 1
    return out


def turn_to_dict(turn) -> dict:
    """A single (unbatched) `sandbox.parser.Turn` as the dict `parse_turn` returns."""
    t = {k: np.asarray(v) for k, v in turn._asdict().items()}

    def b(row, n):
        return bytes(row[: min(int(n), row.shape[-1])].astype(np.uint8).tolist())

    C, A = t["call_valid"].shape[0], t["arg_kind"].shape[1]
    out = {k: bool(t[k]) for k in ("think_ok", "has_text", "unclosed", "too_many_calls", "has_check", "malformed")}
    out.update({k: int(t[k]) for k in ("n_calls", "n_checks", "check_name_len")})
    out["check_name"] = b(t["check_name"], t["check_name_len"])
    out["call_valid"] = [bool(x) for x in t["call_valid"]]
    out["call_overflow"] = [bool(x) for x in t["call_overflow"]]
    out["call_name"] = [b(t["call_name"][c], t["call_name_len"][c]) for c in range(C)]
    for k in ("call_name_len", "arg_count"):
        out[k] = [int(x) for x in t[k]]
    out["arg_key"] = [[b(t["arg_key"][c, a], t["arg_key_len"][c, a]) for a in range(A)] for c in range(C)]
    out["arg_val"] = [[b(t["arg_val"][c, a], t["arg_val_len"][c, a]) for a in range(A)] for c in range(C)]
    for k in ("arg_key_len", "arg_kind", "arg_val_len"):
        out[k] = [[int(x) for x in row] for row in t[k]]
    return out
