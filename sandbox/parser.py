"""Streaming byte-level parser of a policy turn, jit- and vmap-able; `sandbox.reference` defines what it computes.

The env feeds the bytes of every sampled token as it is sampled (`feed_bytes`) and reads the parsed turn at the
end-of-turn token (`finish`). Work per byte is constant: a few tag-match counters (every tag has its only `<` at
byte 0, so a mismatch falls back to 0, or to 1 on `<`: KMP without borders) and a pushdown automaton for JSON with
a fixed-depth stack. All functions act on ONE turn; `jax.vmap` them for a batch.

Two tricks keep it one pass:
- The think region is parsed speculatively as an action region (it is one if `</think>` never comes); when the
  `</think>` after a leading `<think>` completes, the action state is reset.
- Inside a call block the JSON automaton eats every byte, the closing tag's included; the automaton state before
  the `<` that starts a partial `</tool_call>` match is kept (`snap`) and is what the block is judged on when the
  match completes. The tag's bytes can then only have appended to a string beyond its committed length or sent
  the automaton to its sticky error state, so the stored buffers stay exact for every call judged valid.

Buffers have one spare row (call C, argument slot A) that overflowing writes land in; `finish` slices it off and
zeroes everything past the lengths, so a `Turn` equals `reference.parse_turn` field for field. At most one stored
byte is written per input byte, into one flat array: under vmap a write is a scatter, far costlier than an
elementwise select, so there is exactly one per byte; small int tables use one-hot selects instead.
"""
from __future__ import annotations

import functools
import operator
from typing import NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from sandbox import token_table
from sandbox.token_table import TokenTable
from sandbox.reference import (CALL_CLOSE, CALL_OPEN, CHECK_CLOSE, CHECK_OPEN, KIND_ARRAY, KIND_BOOL, KIND_INTEGER,
                               KIND_NONE, KIND_NULL, KIND_NUMBER, KIND_OBJECT, KIND_STRING, MARKER, THINK_CLOSE,
                               THINK_OPEN, Caps)

__all__ = ["Caps", "ParserState", "Turn", "TokenTable", "init", "feed", "feed_bytes", "feed_token", "needs_bytes",
           "feed_token_table", "feed_token_bytes", "restart", "finish",
           "parse",
           "KIND_NONE", "KIND_STRING", "KIND_INTEGER", "KIND_NUMBER", "KIND_BOOL", "KIND_NULL", "KIND_ARRAY",
           "KIND_OBJECT"]

i32 = jnp.int32

# JSON automaton modes.
M_VALUE, M_ARR_FIRST, M_OBJ_FIRST, M_OBJ_KEY, M_COLON, M_AFTER, M_STR, M_NUM, M_LIT, M_ERR = range(10)
# Number sub-states: after '-', after leading 0, integer digits, after '.', fraction, after e/E, after exp sign, exp.
N_MINUS, N_ZERO, N_INT, N_DOT, N_FRAC, N_E, N_ESIGN, N_EXP = range(8)
# Role of the string / scalar being read.
R_NONE, R_TOPKEY, R_NAME, R_ARGS, R_ARGKEY, R_ARGVAL = range(6)
# Role of the last top-level key.
K_OTHER, K_NAME, K_ARGUMENTS = range(3)
OBJ, ARR = 1, 2  # stack entries


# Lookups below are comparisons and one-hot selects, not table gathers: under vmap on CPU a gather costs about as
# much as a hundred elementwise ops.
def _one_of(b, chars: bytes):
    return functools.reduce(operator.or_, [b == c for c in chars])


def _at(table, i):
    """table[i] for a short constant table and a traced index (0 when out of range)."""
    table = np.asarray(table, np.int32)
    return jnp.where(np.arange(len(table)) == i, table, 0).sum()


def _tag(s: bytes) -> np.ndarray:
    return np.frombuffer(s, np.uint8).astype(np.int32)


def _num_next(sub, b):
    """Next number sub-state after byte b, or -1 when b cannot continue the number."""
    digit = (b >= 48) & (b <= 57)
    return jnp.select(
        [(sub == N_MINUS) & (b == 48), (sub == N_MINUS) & digit,
         ((sub == N_ZERO) | (sub == N_INT) | (sub == N_FRAC)) & _one_of(b, b"eE"),
         ((sub == N_ZERO) | (sub == N_INT)) & (b == 46), (sub == N_INT) & digit,
         ((sub == N_DOT) | (sub == N_FRAC)) & digit, (sub == N_E) & _one_of(b, b"+-"),
         ((sub == N_E) | (sub == N_ESIGN) | (sub == N_EXP)) & digit],
        [N_ZERO, N_INT, N_E, N_DOT, N_INT, N_FRAC, N_ESIGN, N_EXP], -1)


def _value_kind(b):
    """KIND_* of a value starting with byte b (KIND_NONE if none does)."""
    return jnp.select([b == 34, (b == 45) | ((b >= 48) & (b <= 57)), _one_of(b, b"tf"), b == 110, b == 91, b == 123],
                      [KIND_STRING, KIND_INTEGER, KIND_BOOL, KIND_NULL, KIND_ARRAY, KIND_OBJECT], KIND_NONE)


def _escape(b):
    """The byte a simple escape `\\b` stands for, -1 if b is not one."""
    return jnp.select([b == k for k in b'"\\/bfnrt'], list(b'"\\/\b\f\n\r\t'), -1)


def _hex(b):
    return jnp.select([(b >= 48) & (b <= 57), (b >= 97) & (b <= 102), (b >= 65) & (b <= 70)], [b - 48, b - 87, b - 55], -1)


LITERALS = np.array([list(b"true\0"), list(b"false"), list(b"null\0")], np.int32)


class Json(NamedTuple):
    """Control state of the JSON automaton for the current call block (scalars unless shaped)."""
    mode: jax.Array  # M_*
    sub: jax.Array  # M_STR: 0 plain, 1 after '\\', 2..5 reading hex digit 1..4; M_NUM: N_*; M_LIT: bytes matched
    lit: jax.Array  # M_LIT: 0 true, 1 false, 2 null
    uval: jax.Array  # \\uXXXX value so far
    hi: jax.Array  # bool: the last thing decoded was a high-surrogate escape (a low one right after joins it)
    is_key: jax.Array  # bool: the string being read is an object key
    role: jax.Array  # R_* of the string / scalar being read
    depth: jax.Array  # open containers
    stack: jax.Array  # int32[depth cap]: OBJ / ARR per level
    args_open: jax.Array  # bool: the depth-2 container is the top-level "arguments" object
    key_role: jax.Array  # K_* of the last top-level key
    mname: jax.Array  # bool: the top-level key read so far is a prefix of "name"
    margs: jax.Array  # bool: ... of "arguments"
    slen: jax.Array  # canonical bytes of the current string / scalar so far
    nonascii: jax.Array  # bool: the argument key being read has a marker byte
    kreg: jax.Array  # uint32[ceil(KB/4)]: the argument key being read, 4 bytes a word, zero past its end
    slot: jax.Array  # argument slot the current value goes to
    n_args: jax.Array  # distinct argument keys
    name_kind: jax.Array  # KIND_* of the last "name" value
    args_kind: jax.Array  # KIND_* of the last "arguments" value
    overflow: jax.Array  # bool: the arguments do not fit (Caps.A, Caps.KB, non-ASCII key)
    is_float: jax.Array  # bool: the number being read has a fraction or exponent


class Act(NamedTuple):
    """Action-region state."""
    block: jax.Array  # 0 outside, 1 in a call block, 2 in a check block
    m_call: jax.Array  # bytes of `<tool_call>` matched (outside blocks)
    m_check: jax.Array  # bytes of `<tool_check>` matched (outside blocks)
    m_close: jax.Array  # bytes of the current block's closing tag matched
    has_text: jax.Array
    n_calls: jax.Array
    n_checks: jax.Array
    json: Json
    snap: Json  # `json` before the `<` that began the current closing-tag match
    cstart: jax.Array  # bool: a non-ws byte was seen in this check block
    clen: jax.Array  # check bytes since the first non-ws one
    clast: jax.Array  # ... up to and including the last non-ws one
    csnap: jax.Array  # int32[3]: (cstart, clen, clast) before the `<` of the closing-tag match


class Buf(NamedTuple):
    """Stored calls and check (one spare call row and argument slot; see module docstring)."""
    bytes: jax.Array  # uint8[S]: names [C+1, NB], keys [C+1, A+1, KB], values [C+1, A+1, VB], check [NB] (`_layout`)
    call_valid: jax.Array  # bool[C+1]
    call_overflow: jax.Array  # bool[C+1]
    arg_count: jax.Array  # int32[C+1]
    name_len: jax.Array  # int32[C+1]
    arg_key_len: jax.Array  # int32[C+1, A+1]
    arg_kind: jax.Array  # int32[C+1, A+1]
    arg_val_len: jax.Array  # int32[C+1, A+1]
    check_len: jax.Array  # int32[]
    kslot: jax.Array  # uint32[A+1, ceil(KB/4)]: the current call's keys packed as `Json.kreg`, for duplicates
    klen: jax.Array  # int32[A+1]: their lengths


def _words(caps: Caps) -> int:
    return -(-caps.KB // 4)


def _layout(caps: Caps):
    """Offsets of the regions of `Buf.bytes`: names, keys, values, check, and the total size."""
    C1, A1 = caps.C + 1, caps.A + 1
    keys = C1 * caps.NB
    vals = keys + C1 * A1 * caps.KB
    check = vals + C1 * A1 * caps.VB
    return 0, keys, vals, check, check + caps.NB


@flax.struct.dataclass
class ParserState:
    """The parser's state for one turn; `caps` is static (part of the tree structure, not a leaf)."""
    think: jax.Array  # 0 matching `<think>` at byte 0, 1 inside it, 2 closed (think_ok), 3 no think
    tm: jax.Array  # bytes of `<think>` (think == 0) or `</think>` (think == 1) matched
    act: Act
    buf: Buf
    caps: Caps = flax.struct.field(pytree_node=False, default=Caps())


class Turn(NamedTuple):
    """A parsed turn (C = Caps.C, A = Caps.A; fields as in `sandbox.reference`; zero where absent / invalid)."""
    think_ok: jax.Array  # bool[]: starts with `<think>` and a `</think>` follows
    has_text: jax.Array  # bool[]: non-ws bytes outside blocks in the action region
    unclosed: jax.Array  # bool[]: a block is still open at the end
    n_calls: jax.Array  # int32[]: closed call blocks (may exceed C)
    too_many_calls: jax.Array  # bool[]: n_calls > C
    n_checks: jax.Array  # int32[]: closed check blocks
    has_check: jax.Array  # bool[]: n_checks > 0
    check_name: jax.Array  # uint8[NB]: first check block's stripped content, truncated
    check_name_len: jax.Array  # int32[]: its full length
    malformed: jax.Array  # bool[]: unclosed | too_many_calls | n_checks > 1
    call_valid: jax.Array  # bool[C]: well-formed JSON call whose arguments fit
    call_overflow: jax.Array  # bool[C]: well-formed but the arguments do not fit
    call_name: jax.Array  # uint8[C, NB]: canonical "name", truncated
    call_name_len: jax.Array  # int32[C]: its full length
    arg_count: jax.Array  # int32[C]: distinct argument keys
    arg_key: jax.Array  # uint8[C, A, KB]
    arg_key_len: jax.Array  # int32[C, A]
    arg_kind: jax.Array  # int32[C, A]: KIND_*
    arg_val: jax.Array  # uint8[C, A, VB]: canonical string / number text / true|false, truncated
    arg_val_len: jax.Array  # int32[C, A]: full length


def _z(dtype=i32):
    return jnp.zeros((), dtype)


def _json_init(caps: Caps) -> Json:
    f = _z(bool)
    return Json(mode=_z(), sub=_z(), lit=_z(), uval=_z(), hi=f, is_key=f, role=_z(), depth=_z(),
                stack=jnp.zeros(caps.depth, i32), args_open=f, key_role=_z(), mname=f, margs=f, slen=_z(),
                nonascii=f, kreg=jnp.zeros(_words(caps), jnp.uint32), slot=_z(), n_args=_z(), name_kind=_z(), args_kind=_z(),
                overflow=f, is_float=f)


def _act_init(caps: Caps) -> Act:
    j = _json_init(caps)
    return Act(block=_z(), m_call=_z(), m_check=_z(), m_close=_z(), has_text=_z(bool), n_calls=_z(), n_checks=_z(),
               json=j, snap=j, cstart=_z(bool), clen=_z(), clast=_z(), csnap=jnp.zeros(3, i32))


def init(caps: Caps = Caps()) -> ParserState:
    """The state before the first byte of a turn."""
    C, A = caps.C, caps.A
    if min(caps) < 1:
        raise ValueError(f"parser.init: every capacity must be >= 1, got {caps}")
    buf = Buf(bytes=jnp.zeros(_layout(caps)[-1], jnp.uint8), call_valid=jnp.zeros(C + 1, bool),
              call_overflow=jnp.zeros(C + 1, bool), arg_count=jnp.zeros(C + 1, i32), name_len=jnp.zeros(C + 1, i32),
              arg_key_len=jnp.zeros((C + 1, A + 1), i32), arg_kind=jnp.zeros((C + 1, A + 1), i32),
              arg_val_len=jnp.zeros((C + 1, A + 1), i32), check_len=_z(),
              kslot=jnp.zeros((A + 1, _words(caps)), jnp.uint32), klen=jnp.zeros(A + 1, i32))
    return ParserState(think=_z(), tm=_z(), act=_act_init(caps), buf=buf, caps=caps)


def _kmp(m, b, pat):
    """Next match count of a tag whose only `<` is its first byte."""
    return jnp.where(b == _at(pat, m), m + 1, jnp.where(b == 60, 1, 0))


def _set(arr, idx, val, cond):
    """arr[idx] = val where cond, for small arrays: a one-hot select (no scatter). idx: one index per axis."""
    idx = idx if isinstance(idx, tuple) else (idx,)
    hit = cond
    for axis, i in enumerate(idx):
        hit = hit & (jax.lax.broadcasted_iota(i32, arr.shape, axis) == i)
    return jnp.where(hit, jnp.asarray(val).astype(arr.dtype), arr)


def _write(store, off, val, cond):
    """store[off] = val where cond: the one scatter per byte (an out-of-range index drops it)."""
    off = jnp.where(cond, off, store.shape[0])
    return store.at[off].set(jnp.asarray(val).astype(store.dtype), mode="drop", unique_indices=True)


def _json_step(j: Json, b, buf: Buf, ci, on, caps: Caps):
    """One byte through the JSON automaton.

    Returns the new control state, the buffers with their small tables updated (gated by `on`), and the byte to
    store as (cond, offset, value), not yet gated.
    """
    C, A, NB, KB, VB, D = caps
    in_num = j.mode == M_NUM
    num_next = _num_next(j.sub, b)
    acc = (j.sub == N_ZERO) | (j.sub == N_INT) | (j.sub == N_FRAC) | (j.sub == N_EXP)
    num_cont = in_num & (num_next >= 0)
    num_end = in_num & acc & (num_next < 0)
    num_bad = in_num & ~acc & (num_next < 0)
    m = jnp.where(num_end, M_AFTER, j.mode)  # a delimiter ends the number; the same byte is then read as a delimiter

    jws = _one_of(b, b" \t\n\r")
    top_obj = jnp.where(jnp.arange(D) == j.depth - 1, j.stack, 0).sum() == OBJ
    vkind = _value_kind(b)
    start_val = ((m == M_VALUE) | (m == M_ARR_FIRST)) & (vkind > 0) & ((j.depth > 0) | (vkind == KIND_OBJECT))
    push = start_val & ((vkind == KIND_ARRAY) | (vkind == KIND_OBJECT))
    push_over = push & (j.depth >= D)
    after_in = (m == M_AFTER) & (j.depth > 0)
    arr_close = ((m == M_ARR_FIRST) | (after_in & ~top_obj)) & (b == ord("]"))
    obj_close = ((m == M_OBJ_FIRST) | (after_in & top_obj)) & (b == ord("}"))
    close = arr_close | obj_close
    start_key = ((m == M_OBJ_FIRST) | (m == M_OBJ_KEY)) & (b == ord('"'))
    colon = (m == M_COLON) & (b == ord(":"))
    comma = after_in & (b == ord(","))
    structural = m <= M_AFTER
    skip_ws = structural & jws
    struct_bad = structural & ~(skip_ws | start_val | close | start_key | colon | comma)

    # strings
    in_str = m == M_STR
    s0 = in_str & (j.sub == 0)
    str_end = s0 & (b == ord('"'))
    str_bs = s0 & (b == ord("\\"))
    str_ctrl = s0 & (b < 0x20)
    str_plain = s0 & ~str_end & ~str_bs & ~str_ctrl
    s1 = in_str & (j.sub == 1)
    esc_val = _escape(b)
    esc_simple = s1 & (esc_val >= 0)
    esc_u = s1 & (b == ord("u"))
    esc_bad = s1 & (esc_val < 0) & (b != ord("u"))
    sh = in_str & (j.sub >= 2)
    hv = _hex(b)
    hex_ok = sh & (hv >= 0)
    hex_bad = sh & (hv < 0)
    uval = j.uval * 16 + hv
    u_done = hex_ok & (j.sub == 5)
    u_low = (uval >= 0xDC00) & (uval <= 0xDFFF)
    u_high = (uval >= 0xD800) & (uval <= 0xDBFF)
    u_emit = u_done & ~(j.hi & u_low)  # a low surrogate right after a high one joins it: one character
    emit_str = str_plain | esc_simple | u_emit
    e_str = jnp.where(str_plain, jnp.where(b < 0x80, b, MARKER),
                      jnp.where(esc_simple, esc_val, jnp.where(uval < 0x80, uval, MARKER)))

    # literals
    in_lit = m == M_LIT
    lit_ok = in_lit & (b == jnp.where((np.arange(3)[:, None] == j.lit) & (np.arange(5) == j.sub), LITERALS, 0).sum())
    lit_bad = in_lit & ~lit_ok
    lit_done = lit_ok & (j.sub + 1 == jnp.where(j.lit == 1, 5, 4))

    err = (j.mode == M_ERR) | num_bad | struct_bad | push_over | str_ctrl | esc_bad | hex_bad | lit_bad

    # roles
    d = j.depth
    vrole = jnp.where(d == 1, jnp.where(j.key_role == K_NAME, R_NAME,
                                        jnp.where(j.key_role == K_ARGUMENTS, R_ARGS, R_NONE)),
                      jnp.where((d == 2) & j.args_open, R_ARGVAL, R_NONE))
    krole = jnp.where(d == 1, R_TOPKEY, jnp.where((d == 2) & j.args_open, R_ARGKEY, R_NONE))
    role = jnp.where(start_val, vrole, jnp.where(start_key, krole, j.role))
    scalar_start = start_val & ((vkind == KIND_INTEGER) | (vkind == KIND_BOOL) | (vkind == KIND_NULL))
    emit = (emit_str | scalar_start | num_cont | lit_ok) & ~err
    e = jnp.where(emit_str, e_str, b)
    pos = jnp.where(start_val | start_key, 0, j.slen)
    slen = pos + emit

    # argument keys: packed into words, compared with the call's earlier keys at the closing quote
    ak = role == R_ARGKEY
    free = jnp.minimum(j.n_args, A)
    slots = jnp.arange(A + 1)
    kreg = jnp.where(start_key, jnp.uint32(0), j.kreg)
    kreg = kreg | jnp.where(emit & ak & (pos < KB) & (jnp.arange(kreg.shape[0]) == pos // 4),
                            e.astype(jnp.uint32) << (8 * (pos % 4)).astype(jnp.uint32), jnp.uint32(0))
    nonascii = jnp.where(start_key, False, j.nonascii) | (emit & ak & (e == MARKER))
    key_end = str_end & ak & ~err
    dup = (buf.kslot == j.kreg).all(axis=1) & (buf.klen == j.slen) & (slots < j.n_args)
    found = dup.any()
    new_key = key_end & ~found
    full = j.n_args >= A
    slot_at_key = jnp.where(found, jnp.argmax(dup), free)

    # top-level keys: compare with "name" / "arguments"
    tk = (role == R_TOPKEY) & emit
    mname = jnp.where(start_key, True, j.mname) & ~(tk & ((pos >= 4) | (_at(_tag(b"name"), pos) != e)))
    margs = jnp.where(start_key, True, j.margs) & ~(tk & ((pos >= 9) | (_at(_tag(b"arguments"), pos) != e)))
    top_key_end = str_end & (role == R_TOPKEY)
    key_role = jnp.where(top_key_end, jnp.where(mname & (j.slen == 4), K_NAME,
                                                jnp.where(margs & (j.slen == 9), K_ARGUMENTS, K_OTHER)), j.key_role)

    # value starts in a role
    new_args = start_val & (vrole == R_ARGS)
    n_args = jnp.where(new_args, 0, j.n_args + (new_key & ~full))
    overflow = jnp.where(new_args, False, j.overflow) | (key_end & ((j.slen > KB) | j.nonascii | (new_key & full)))
    slot = jnp.where(key_end, slot_at_key, j.slot)
    name_kind = jnp.where(start_val & (vrole == R_NAME), vkind, j.name_kind)
    args_kind = jnp.where(new_args, vkind, j.args_kind)
    args_open = jnp.where(push & (d == 1), vrole == R_ARGS, j.args_open)

    # stack
    depth = d + push - close
    stack = jnp.where(push & (jnp.arange(D) == d), jnp.where(vkind == KIND_OBJECT, OBJ, ARR), j.stack)

    # mode and sub-state
    mode = m
    mode = jnp.where(start_val, jnp.select([vkind == KIND_STRING, vkind == KIND_INTEGER, vkind == KIND_ARRAY,
                                            vkind == KIND_OBJECT], [M_STR, M_NUM, M_ARR_FIRST, M_OBJ_FIRST], M_LIT),
                     mode)
    mode = jnp.where(close | lit_done, M_AFTER, mode)
    mode = jnp.where(start_key, M_STR, mode)
    mode = jnp.where(colon, M_VALUE, mode)
    mode = jnp.where(comma, jnp.where(top_obj, M_OBJ_KEY, M_VALUE), mode)
    mode = jnp.where(str_end, jnp.where(j.is_key, M_COLON, M_AFTER), mode)
    mode = jnp.where(err, M_ERR, mode)
    sub = j.sub
    sub = jnp.where(str_bs, 1, sub)
    sub = jnp.where(esc_simple, 0, sub)
    sub = jnp.where(esc_u, 2, sub)
    sub = jnp.where(hex_ok, jnp.where(u_done, 0, j.sub + 1), sub)
    sub = jnp.where(num_cont, num_next, sub)
    sub = jnp.where(lit_ok, j.sub + 1, sub)
    sub = jnp.where(start_key, 0, sub)
    sub = jnp.where(start_val, jnp.select([vkind == KIND_STRING, b == ord("-"), b == ord("0"), vkind == KIND_INTEGER],
                                          [0, N_MINUS, N_ZERO, N_INT], 1), sub)
    hi = jnp.where(u_done, u_high, jnp.where(str_plain | esc_simple | start_key | start_val, False, j.hi))
    is_float = jnp.where(start_val, False, j.is_float) | (num_cont & ((b == ord(".")) | (b == ord("e")) | (b == ord("E"))))

    nj = Json(mode=mode, sub=sub, lit=jnp.where(start_val, jnp.where(b == 116, 0, jnp.where(b == 102, 1, 2)), j.lit),
              uval=jnp.where(esc_u, 0, jnp.where(hex_ok, uval, j.uval)), hi=hi,
              is_key=jnp.where(start_key, True, jnp.where(start_val, False, j.is_key)), role=role, depth=depth,
              stack=stack, args_open=args_open, key_role=key_role, mname=mname, margs=margs, slen=slen,
              nonascii=nonascii, kreg=kreg, slot=slot, n_args=n_args, name_kind=name_kind, args_kind=args_kind,
              overflow=overflow, is_float=is_float)

    # the byte to store: a name, key or value byte of call ci
    names0, keys0, vals0, _, _ = _layout(caps)
    w_name = emit & (role == R_NAME) & (pos < NB)
    w_key = emit & ak & (pos < KB)
    w_val = emit & (role == R_ARGVAL) & (pos < VB)
    off = jnp.select([w_name, w_key], [names0 + ci * NB + pos, keys0 + (ci * (A + 1) + free) * KB + pos],
                     vals0 + (ci * (A + 1) + j.slot) * VB + pos)

    # small tables
    val_start = start_val & (vrole == R_ARGVAL) & ~err
    val_num_end = num_end & (j.role == R_ARGVAL) & ~err
    val_end = (str_end | lit_done) & (role == R_ARGVAL) & ~err
    buf = buf._replace(
        kslot=jnp.where((slots[:, None] == slot_at_key) & on & new_key, j.kreg, buf.kslot),
        klen=_set(buf.klen, slot_at_key, j.slen, on & new_key),
        name_len=_set(buf.name_len, ci, j.slen, on & str_end & (role == R_NAME) & ~err),
        arg_key_len=_set(buf.arg_key_len, (ci, slot_at_key), j.slen, on & new_key),
        arg_kind=_set(buf.arg_kind, (ci, j.slot),
                      jnp.where(val_start, vkind, jnp.where(j.is_float, KIND_NUMBER, KIND_INTEGER)),
                      on & (val_start | val_num_end)),
        arg_val_len=_set(buf.arg_val_len, (ci, j.slot),
                         jnp.where(val_start | (lit_done & (j.lit == 2)), 0, jnp.where(lit_done, slen, j.slen)),
                         on & (val_start | val_num_end | val_end)))
    return nj, buf, (w_name | w_key | w_val, off, e)


def _act_step(a: Act, b, buf: Buf, active, caps: Caps):
    C, NB = caps.C, caps.NB
    out, incall, incheck = a.block == 0, a.block == 1, a.block == 2
    ws = _one_of(b, b" \t\n\r\x0b\x0c")

    # outside blocks: look for the opening tags; bytes of a dropped partial match are text
    mc = _kmp(a.m_call, b, _tag(CALL_OPEN))
    mk = _kmp(a.m_check, b, _tag(CHECK_OPEN))
    pending, newp = jnp.maximum(a.m_call, a.m_check), jnp.maximum(mc, mk)
    open_call = out & (mc == len(CALL_OPEN))
    open_check = out & (mk == len(CHECK_OPEN))
    opened = open_call | open_check
    text = out & ~opened & jnp.where(pending > 0, newp <= pending, (newp == 0) & ~ws)

    # inside a block: look for its closing tag
    mcl = jnp.where(incheck, _kmp(a.m_close, b, _tag(CHECK_CLOSE)), _kmp(a.m_close, b, _tag(CALL_CLOSE)))
    close_call = incall & (mcl == len(CALL_CLOSE))
    close_check = incheck & (mcl == len(CHECK_CLOSE))
    lt = b == 60

    ci = jnp.minimum(a.n_calls, C)
    json, buf, (w_json, off_json, e_json) = _json_step(a.json, b, buf, ci, active & incall, caps)
    snap = jax.tree.map(lambda o, s: jnp.where(incall & lt, o, s), a.json, a.snap)
    s = snap
    well = (s.mode == M_AFTER) & (s.depth == 0) & (s.name_kind == KIND_STRING) & (s.args_kind == KIND_OBJECT)
    commit = active & close_call
    buf = buf._replace(call_valid=_set(buf.call_valid, ci, well & ~s.overflow, commit),
                       call_overflow=_set(buf.call_overflow, ci, well & s.overflow, commit),
                       arg_count=_set(buf.arg_count, ci, s.n_args, commit))

    # check block: content stripped of ws; only the first one is stored
    nonws = ~ws
    cstart = a.cstart | nonws
    w_check = incheck & cstart & (a.clen < NB) & (a.n_checks == 0)
    check0 = _layout(caps)[3]
    write = (active & ((incall & w_json) | w_check), jnp.where(incall, off_json, check0 + a.clen),
             jnp.where(incall, e_json, b))
    clen = a.clen + cstart
    clast = jnp.where(nonws, clen, a.clast)
    csnap = jnp.where(incheck & lt, jnp.stack([a.cstart.astype(i32), a.clen, a.clast]), a.csnap)
    buf = buf._replace(check_len=jnp.where(active & close_check & (a.n_checks == 0), csnap[2], buf.check_len))

    closed = close_call | close_check
    fresh = _json_init(caps)
    json = jax.tree.map(lambda f, x: jnp.where(open_call, f, x), fresh, json)
    na = Act(block=jnp.where(open_call, 1, jnp.where(open_check, 2, jnp.where(closed, 0, a.block))),
             m_call=jnp.where(out & ~opened, mc, 0), m_check=jnp.where(out & ~opened, mk, 0),
             m_close=jnp.where(~out & ~closed, mcl, 0), has_text=a.has_text | text,
             n_calls=a.n_calls + close_call, n_checks=a.n_checks + close_check, json=json, snap=snap,
             cstart=jnp.where(opened, False, cstart), clen=jnp.where(opened, 0, clen),
             clast=jnp.where(opened, 0, clast), csnap=csnap)
    return na, buf, write


def _step(state: ParserState, byte, active):
    """One byte; with `active` False the state is unchanged (masked feeding). Returns the new state (its stored
    bytes not yet written) and the byte write (cond, offset, value) for `_write`."""
    caps = state.caps
    b = jnp.asarray(byte).astype(i32)
    active = jnp.asarray(active, bool)
    think_open, think_close = _tag(THINK_OPEN), _tag(THINK_CLOSE)
    th, tm = state.think, state.tm
    t0 = th == 0
    ok0 = b == _at(think_open, tm)
    tm1 = _kmp(tm, b, think_close)
    closes = (th == 1) & (tm1 == len(THINK_CLOSE))
    new_th = jnp.where(t0, jnp.where(ok0, jnp.where(tm == len(THINK_OPEN) - 1, 1, 0), 3), jnp.where(closes, 2, th))
    new_tm = jnp.where(t0, jnp.where(ok0 & (tm < len(THINK_OPEN) - 1), tm + 1, 0), jnp.where(th == 1, tm1, tm))

    act, buf, write = _act_step(state.act, b, state.buf, active, caps)
    act = jax.tree.map(lambda f, x: jnp.where(closes, f, x), _act_init(caps), act)
    new = (new_th, new_tm, act)
    old = (th, tm, state.act)
    new_th, new_tm, act = jax.tree.map(lambda n, o: jnp.where(active, n, o), new, old)
    return ParserState(think=new_th, tm=new_tm, act=act, buf=buf, caps=caps), write


def _feed_byte(state: ParserState, byte, active) -> ParserState:
    state, (cond, off, val) = _step(state, byte, active)
    return state.replace(buf=state.buf._replace(bytes=_write(state.buf.bytes, off, val, cond)))


def feed(state: ParserState, byte) -> ParserState:
    """Feed one byte (uint8[] or int)."""
    return _feed_byte(state, byte, True)


def feed_bytes(state: ParserState, data, n) -> ParserState:
    """Feed the first `n` bytes of `data` (uint8[N]), e.g. one token's bytes from a byte table."""
    data = jnp.asarray(data)
    return jax.lax.fori_loop(0, data.shape[0], lambda i, s: _feed_byte(s, data[i], i < n), state)


def feed_token(state: ParserState, table: TokenTable, token, data, n) -> ParserState:
    """Feed one token: its id `token`, its bytes `data` (uint8[MB], the byte-table row) and their count `n`
    (0 feeds nothing). Equals `feed_bytes(state, data, n)` (the Turn `finish` reads is the same).

    `table` is the tokenizer's `sandbox.token_table` on the device. A token that stays outside tool blocks moves
    the tag automaton by one table lookup (`feed_token_table`); only a token with a byte inside a call or check
    block (`needs_bytes`) runs the byte loop (`feed_token_bytes`), for its `n` bytes, so under `jax.vmap` the loop
    runs as often as the longest such token in the batch (zero times when there is none).
    """
    slow = needs_bytes(state, table, token, n)
    by_bytes = feed_token_bytes(state, data, jnp.where(slow, n, 0))
    return jax.tree.map(lambda u, v: jnp.where(slow, u, v), by_bytes, feed_token_table(state, table, token, n))


def _entry(state: ParserState, table: TokenTable, token):
    ctrl = (state.think, state.tm, state.act.block, state.act.m_call, state.act.m_check, state.act.m_close)
    x = table.index[sum(f * table.strides[k] for k, f in enumerate(ctrl))]
    return table.trans[table.cls[token], x]


def needs_bytes(state: ParserState, table: TokenTable, token, n) -> jax.Array:
    """bool[]: feeding the token (n > 0 bytes) reads a byte inside a call or check block, so `feed_token` must take
    the byte path (`feed_token_bytes`); otherwise `feed_token_table` is exact."""
    return (jnp.asarray(n, i32) > 0) & (((_entry(state, table, token) >> 16) & token_table.TOUCHED) > 0)


def feed_token_table(state: ParserState, table: TokenTable, token, n) -> ParserState:
    """`feed_token` for a token that does not `needs_bytes`: the control fields, has_text, and the restarts a think
    close or a block opening implies, from the table (the state unchanged when n == 0)."""
    caps = state.caps
    a = state.act
    e = _entry(state, table, token)
    flags = e >> 16
    th, tm, block, m_call, m_check, m_close = (table.fields[e & 0xFFFF, k] for k in range(6))
    text = (flags & token_table.TEXT) > 0
    reset = (flags & token_table.RESET) > 0
    opened_call = (flags & token_table.OPEN_CALL) > 0
    opened = (flags & (token_table.OPEN_CALL | token_table.OPEN_CHECK)) > 0
    fresh = _act_init(caps)
    base = jax.tree.map(lambda f, o: jnp.where(reset, f, o), fresh, a)
    fast = base._replace(block=block, m_call=m_call, m_check=m_check, m_close=m_close,
                         has_text=jnp.where(reset, text, a.has_text | text),
                         json=jax.tree.map(lambda f, o: jnp.where(opened_call, f, o), fresh.json, base.json),
                         cstart=base.cstart & ~opened, clen=jnp.where(opened, 0, base.clen),
                         clast=jnp.where(opened, 0, base.clast))
    feed = jnp.asarray(n, i32) > 0
    th, tm, act = jax.tree.map(lambda u, v: jnp.where(feed, u, v), (th, tm, fast), (state.think, state.tm, a))
    return state.replace(think=th, tm=tm, act=act)


def feed_token_bytes(state: ParserState, data, n) -> ParserState:
    """`feed_bytes(state, data, n)` with the byte store out of the loop carry: the loop collects its writes ([MB]
    offsets and values) and one scatter stores them after it."""
    data = jnp.asarray(data)
    mb = data.shape[0]
    store = state.buf.bytes
    drop = store.shape[0] + jnp.arange(mb)  # distinct out-of-range offsets: dropped writes
    lite = state.replace(buf=state.buf._replace(bytes=jnp.zeros(0, jnp.uint8)))

    def body(c):
        i, s, offs, vals = c
        s, (w, off, val) = _step(s, data[i], True)
        offs = jnp.where(w & (offs == off), drop, offs)  # a later write to the same byte wins
        hit = w & (jnp.arange(mb) == i)
        return i + 1, s, jnp.where(hit, off, offs), jnp.where(hit, jnp.asarray(val).astype(jnp.uint8), vals)

    init_c = (jnp.zeros((), i32), lite, drop, jnp.zeros(mb, jnp.uint8))
    _, s, offs, vals = jax.lax.while_loop(lambda c: c[0] < n, body, init_c)
    return s.replace(buf=s.buf._replace(bytes=store.at[offs].set(vals, mode="drop", unique_indices=True)))


def restart(state: ParserState) -> ParserState:
    """`init` for the next turn, keeping the byte store as it is (`finish` reads only bytes below the lengths the
    next turn writes, so zeroing it would be a pass over the whole store for nothing)."""
    new = init(state.caps)
    return new.replace(buf=new.buf._replace(bytes=state.buf.bytes))


def finish(state: ParserState) -> Turn:
    """The parsed turn after the last byte (the end-of-turn token itself is not fed)."""
    caps = state.caps
    C, A = caps.C, caps.A
    a, b = state.act, state.buf
    _, keys0, vals0, check0, _ = _layout(caps)
    call_name_b = b.bytes[:keys0].reshape(C + 1, caps.NB)[:C]
    arg_key_b = b.bytes[keys0:vals0].reshape(C + 1, A + 1, caps.KB)[:C, :A]
    arg_val_b = b.bytes[vals0:check0].reshape(C + 1, A + 1, caps.VB)[:C, :A]
    unclosed = a.block != 0
    too_many = a.n_calls > C
    has_check = a.n_checks > 0
    present = jnp.arange(C) < a.n_calls
    valid = present & b.call_valid[:C]

    def bytes_upto(arr, n, keep):
        keep = keep & (jnp.arange(arr.shape[-1]) < jnp.minimum(n, arr.shape[-1])[..., None])
        return jnp.where(keep, arr, 0).astype(jnp.uint8)

    arg_count = jnp.where(valid, b.arg_count[:C], 0)
    in_slot = valid[:, None] & (jnp.arange(A)[None, :] < arg_count[:, None])
    key_len = jnp.where(in_slot, b.arg_key_len[:C, :A], 0)
    val_len = jnp.where(in_slot, b.arg_val_len[:C, :A], 0)
    name_len = jnp.where(valid, b.name_len[:C], 0)
    check_len = jnp.where(has_check, b.check_len, 0)
    return Turn(
        think_ok=state.think == 2,
        has_text=a.has_text | ((a.block == 0) & (jnp.maximum(a.m_call, a.m_check) > 0)),
        unclosed=unclosed, n_calls=a.n_calls, too_many_calls=too_many, n_checks=a.n_checks, has_check=has_check,
        check_name=bytes_upto(b.bytes[check0:], check_len, has_check), check_name_len=check_len,
        malformed=unclosed | too_many | (a.n_checks > 1),
        call_valid=valid, call_overflow=present & b.call_overflow[:C],
        call_name=bytes_upto(call_name_b, name_len, valid[:, None]), call_name_len=name_len,
        arg_count=arg_count,
        arg_key=bytes_upto(arg_key_b, key_len, in_slot[..., None]), arg_key_len=key_len,
        arg_kind=jnp.where(in_slot, b.arg_kind[:C, :A], 0),
        arg_val=bytes_upto(arg_val_b, val_len, in_slot[..., None]), arg_val_len=val_len,
    )


def parse(data, n, caps: Caps = Caps()) -> Turn:
    """A whole turn at once: `data` uint8[N] padded, `n` its length. For tests, benchmarks and offline scoring."""
    return finish(feed_bytes(init(caps), data, n))
