"""What each token does to the parser's tag automaton, precomputed once per tokenizer (a token-level automaton).

`sandbox.parser` reads a turn byte by byte. Most of its state is the JSON of call blocks, but where the turn is
(think region, partial tag matches, which block is open) is a finite automaton over bytes: the control state
`(think, tm, block, m_call, m_check, m_close)`, the fields of `parser.ParserState` / `parser.Act` of those names.
As constrained decoders do for grammars (outlines' FSM index, xgrammar's token mask cache), this module enumerates
its reachable states and tabulates, for every token and state, the state after the token's bytes and what they
did, so the env moves a policy token through everything outside tool blocks with a few gathers:

    trans[cls[token], x] = x_next | flags << 16

`x` indexes `fields int32[X, 6]`, the reachable control states; `index[mixed-radix(fields)]` maps a state back to
its `x` (`TokenTable.strides`). Flags:
  TEXT        has_text: a byte was text outside blocks (after the last think reset, if any)
  RESET       `</think>` completed: the action state restarts (`parser._act_init`)
  TOUCHED     a byte was read inside a call or check block: the JSON / check-content automaton must see the token,
              so the parser runs its byte loop for it (`parser.feed_token`)
  OPEN_CALL   a `<tool_call>` completed (then at the token's last byte, unless TOUCHED)
  OPEN_CHECK  a `<tool_check>` completed (likewise)
Tokens whose rows are equal share a class (`cls`), which keeps the table small: a vocabulary of 150k pieces has a
few thousand classes, since only bytes of the tags and whitespace tell tokens apart.

The byte-level transition here mirrors `parser._step`; the agreement tests run the parser through the table
(`parser.feed_token`) against `sandbox.reference`.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

from sandbox.reference import CALL_CLOSE, CALL_OPEN, CHECK_CLOSE, CHECK_OPEN, THINK_CLOSE, THINK_OPEN

FIELDS = ("think", "tm", "block", "m_call", "m_check", "m_close")
TEXT, RESET, TOUCHED, OPEN_CALL, OPEN_CHECK = 1, 2, 4, 8, 16
WS = b" \t\n\r\x0b\x0c"  # whitespace outside blocks (as `parser._act_step` has it)


class TokenTable(NamedTuple):
    """One tokenizer's table (numpy from `build`; `sandbox.env.make_vocab` puts it on the device).

    cls:     int32[V]       token id -> class
    trans:   int32[K, X]    class, state -> next state | flags << 16
    fields:  int32[X, 6]    state -> its control fields (FIELDS order)
    index:   int32[R]       sum(fields * strides) -> state (-1 where unreachable)
    strides: int32[6]       the mixed radix of `index`
    """
    cls: np.ndarray
    trans: np.ndarray
    fields: np.ndarray
    index: np.ndarray
    strides: np.ndarray


def _kmp(m: int, b: int, pat: bytes) -> int:
    """`parser._kmp`: a tag whose only `<` is its first byte (a byte past the pattern compares with 0)."""
    return m + 1 if b == (pat[m] if m < len(pat) else 0) else (1 if b == 60 else 0)


def control_byte(x: tuple, b: int) -> tuple[tuple, int]:
    """One byte through the control automaton: (next state, flags of this byte) as `parser._step` computes them."""
    th, tm, block, m_call, m_check, m_close = x
    if th == 0:
        ok0 = b == THINK_OPEN[tm]
        nth = (1 if tm == len(THINK_OPEN) - 1 else 0) if ok0 else 3
        ntm = tm + 1 if ok0 and tm < len(THINK_OPEN) - 1 else 0
        closes = False
    else:
        tm1 = _kmp(tm, b, THINK_CLOSE)
        closes = th == 1 and tm1 == len(THINK_CLOSE)
        nth = 2 if closes else th
        ntm = tm1 if th == 1 else tm
    out = block == 0
    mc, mk = _kmp(m_call, b, CALL_OPEN), _kmp(m_check, b, CHECK_OPEN)
    pending, newp = max(m_call, m_check), max(mc, mk)
    open_call = out and mc == len(CALL_OPEN)
    open_check = out and mk == len(CHECK_OPEN)
    opened = open_call or open_check
    text = out and not opened and (newp <= pending if pending > 0 else (newp == 0 and b not in WS))
    mcl = _kmp(m_close, b, CHECK_CLOSE if block == 2 else CALL_CLOSE)
    closed = (block == 1 and mcl == len(CALL_CLOSE)) or (block == 2 and mcl == len(CHECK_CLOSE))
    nblock = 1 if open_call else 2 if open_check else 0 if closed else block
    flags = (TOUCHED if not out else 0) | (OPEN_CALL if open_call else 0) | (OPEN_CHECK if open_check else 0)
    if closes:  # the action state restarts; this byte's action-side effects are discarded
        return (nth, ntm, 0, 0, 0, 0), flags | RESET
    act = (nblock, mc if out and not opened else 0, mk if out and not opened else 0,
           mcl if not out and not closed else 0)
    return (nth, ntm) + act, flags | (TEXT if text else 0)


@functools.lru_cache(maxsize=1)
def control_automaton() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reachable control states from the turn's start, breadth first.

    Returns fields int32[X, 6] (state 0 is the start), delta int32[X, 256] and flags int32[X, 256] per byte.
    """
    start = (0,) * len(FIELDS)
    ids, states, delta, flags = {start: 0}, [start], [], []
    i = 0
    while i < len(states):
        row_d, row_f = [], []
        for b in range(256):
            nx, f = control_byte(states[i], b)
            if nx not in ids:
                ids[nx] = len(states)
                states.append(nx)
            row_d.append(ids[nx])
            row_f.append(f)
        delta.append(row_d)
        flags.append(row_f)
        i += 1
    return np.array(states, np.int32), np.array(delta, np.int32), np.array(flags, np.int32)


def build(byte_table: np.ndarray, lengths: np.ndarray) -> TokenTable:
    """The table of a tokenizer's byte table (uint8[V, MB], lengths int32[V]: the bytes each token id writes)."""
    fields, delta, bflags = control_automaton()
    n_states = len(fields)
    # Bytes that act alike in every state are one byte class; tokens with the same class string act alike.
    _, byte_cls = np.unique(np.concatenate([delta, bflags]).T, axis=0, return_inverse=True)
    byte_cls = byte_cls.reshape(-1).astype(np.int32)
    delta_c = np.zeros((n_states, byte_cls.max() + 1), np.int32)
    flags_c = np.zeros_like(delta_c)
    delta_c[:, byte_cls], flags_c[:, byte_cls] = delta, bflags
    table = np.asarray(byte_table)
    lengths = np.asarray(lengths, np.int32)
    mb = max(int(lengths.max(initial=0)), 1)
    seq = np.where(np.arange(mb)[None, :] < lengths[:, None], byte_cls[table[:, :mb]] + 1, 0).astype(np.uint8)
    _, first, tok_seq = np.unique(seq.view(np.dtype((np.void, mb))).ravel(), return_index=True,
                                  return_inverse=True)  # unique class strings, as whole rows
    order = np.argsort(-lengths[first], kind="stable")  # longest first: live rows at byte p are a prefix
    uniq, ulen = seq[first[order]], lengths[first[order]]
    tok_seq = np.argsort(order)[tok_seq.reshape(-1)]

    # Every unique class string from every state at once: [U, X].
    x = np.broadcast_to(np.arange(n_states, dtype=np.int32), (len(uniq), n_states)).copy()
    text = np.zeros(x.shape, bool)
    acc = np.zeros(x.shape, np.int32)  # RESET | TOUCHED | OPEN_* seen so far
    for p in range(mb):
        k = int(np.sum(ulen > p))
        cc = uniq[:k, p, None].astype(np.int32) - 1
        f = flags_c[x[:k], cc]
        x[:k] = delta_c[x[:k], cc]
        text[:k] = np.where(f & RESET, False, text[:k] | (f & TEXT > 0))
        acc[:k] |= f & (RESET | TOUCHED | OPEN_CALL | OPEN_CHECK)
    trans = x | ((acc | text.astype(np.int32) * TEXT) << 16)
    trans = np.ascontiguousarray(trans, np.int32)
    _, first, tok_cls = np.unique(trans.view(np.dtype((np.void, 4 * n_states))).ravel(), return_index=True,
                                  return_inverse=True)
    rows = trans[first]
    radix = fields.max(0) + 1
    strides = np.cumprod(np.concatenate([radix[1:], [1]])[::-1])[::-1].astype(np.int32)
    index = np.full(int(np.prod(radix)), -1, np.int32)
    index[fields @ strides] = np.arange(n_states, dtype=np.int32)
    return TokenTable(cls=tok_cls.reshape(-1)[tok_seq].astype(np.int32), trans=rows.astype(np.int32),
                      fields=fields, index=index, strides=strides)
