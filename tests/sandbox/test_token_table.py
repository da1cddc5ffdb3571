"""The token-level parser path (`sandbox.token_table` + `parser.feed_token`) against `sandbox.reference`.

Turns are cut into tokens of a vocabulary and fed token by token; the parsed Turn must equal the reference's parse
of the same bytes, field for field: on synthetic vocabularies (every single byte plus random fragments of hostile
turns, so tag and JSON pieces straddle token boundaries in every way), and on real tokenizers (the built-in one,
Qwen2.5's 151,665 pieces, SmolLM2's 49,152 where its weights are installed).
"""
import functools
import pathlib
import random
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sandbox import parser, token_table
from sandbox.reference import CALL_OPEN, THINK_CLOSE, Caps, parse_turn, turn_to_dict
from tests.sandbox.test_parser import BATCHED, TINY, hypothesis_turns, random_turn

ROOT = pathlib.Path(__file__).resolve().parents[2]


def synthetic_vocab(rng: random.Random, turns, n_pieces: int = 2000):
    """Every single byte plus random substrings (2..14 bytes) of `turns`: (byte table, lengths, piece -> id)."""
    pieces = {bytes([b]) for b in range(256)}
    while len(pieces) < 256 + n_pieces:
        t = rng.choice(turns)
        i = rng.randrange(len(t) + 1)
        if t[i:i + 2]:
            pieces.add(t[i:i + rng.randint(2, 14)])
    pieces = sorted(pieces)
    mb = max(map(len, pieces))
    table = np.zeros((len(pieces), mb), np.uint8)
    for i, p in enumerate(pieces):
        table[i, :len(p)] = np.frombuffer(p, np.uint8)
    return table, np.array([len(p) for p in pieces], np.int32), {p: i for i, p in enumerate(pieces)}


def cut(rng: random.Random, data: bytes, index: dict, longest: int) -> list[int]:
    """A random tokenization of `data` with pieces of `index` (single bytes always exist)."""
    out, pos = [], 0
    while pos < len(data):
        k = rng.randint(1, longest)
        while data[pos:pos + k] not in index:
            k -= 1
        out.append(index[data[pos:pos + k]])
        pos += k
    return out


@functools.lru_cache(maxsize=None)
def _runner(caps: Caps):
    def one(table, tt, ids, ns):
        def step(s, x):
            tid, n = x
            return parser.feed_token(s, tt, tid, table[tid], n), None
        return parser.finish(jax.lax.scan(step, parser.init(caps), (ids, ns))[0])

    return jax.jit(jax.vmap(one, in_axes=(None, None, 0, 0)))


def assert_tokens_agree(table, lengths, token_lists, caps=Caps(), tt=None):
    """Feed each token list through `feed_token`; the Turn must equal `parse_turn` of the tokens' bytes."""
    tt = token_table.build(table, lengths) if tt is None else tt
    up = lambda n, m: -(-max(n, 1) // m) * m  # noqa: E731  shapes padded, so examples share one compile
    tt = tt._replace(trans=np.pad(tt.trans, ((0, up(len(tt.trans), 1024) - len(tt.trans)), (0, 0))))
    table = np.pad(table, ((0, 0), (0, up(table.shape[1], 16) - table.shape[1])))
    width = up(max(map(len, token_lists)), 64)
    ids = np.zeros((len(token_lists), width), np.int32)
    ns = np.zeros((len(token_lists), width), np.int32)  # 0 past the end: feeds nothing
    for i, toks in enumerate(token_lists):
        ids[i, :len(toks)] = toks
        ns[i, :len(toks)] = lengths[toks]
    out = jax.device_get(_runner(caps)(jnp.asarray(table), jax.tree.map(jnp.asarray, tt), ids, ns))
    for i, toks in enumerate(token_lists):
        data = b"".join(table[t, :lengths[t]].tobytes() for t in toks)
        got, want = turn_to_dict(jax.tree.map(lambda x: x[i], out)), parse_turn(data, caps)
        if got != want:
            diff = {k: (got[k], want[k]) for k in want if got[k] != want[k]}
            pytest.fail(f"feed_token != reference on {data!r} cut as {toks}\n(parser, reference): {diff}")


def _synthetic_case(seed: int, hand=(), size: int = 300):
    rng = random.Random(seed)
    turns = list(hand) + [random_turn(rng) for _ in range(size - len(hand))]
    table, lengths, index = synthetic_vocab(rng, [t for t in turns if t] or [b"x"])
    return table, lengths, [cut(rng, t, index, table.shape[1]) for t in turns]


@settings(max_examples=6, **BATCHED)
@given(hand=st.lists(hypothesis_turns, max_size=30), seed=st.integers(0, 2**32 - 1))
def test_feed_token_agrees_with_reference(hand, seed):
    """6 examples x 300 turns, each on its own random vocabulary and tokenization."""
    assert_tokens_agree(*_synthetic_case(seed, hand))


@settings(max_examples=3, **BATCHED)
@given(seed=st.integers(0, 2**32 - 1))
def test_feed_token_agrees_with_reference_tiny_caps(seed):
    table, lengths, toks = _synthetic_case(seed)
    assert_tokens_agree(table, lengths, toks, TINY)


def test_feed_token_equals_feed_bytes_state_for_state():
    """Beyond the Turn: after every token the control fields, has_text and call counts equal the byte path's."""
    table, lengths, toks = _synthetic_case(3, size=64)
    tt = jax.tree.map(jnp.asarray, token_table.build(table, lengths))
    width = max(map(len, toks))
    ids = np.zeros((len(toks), width), np.int32)
    for i, t in enumerate(toks):
        ids[i, :len(t)] = t
    ns = np.where(np.arange(width)[None] < np.array([len(t) for t in toks])[:, None], lengths[ids], 0)
    jt = jnp.asarray(table)

    def fields(s):
        a = s.act
        return (s.think, s.tm, a.block, a.m_call, a.m_check, a.m_close, a.has_text, a.n_calls, a.n_checks)

    @jax.jit
    @jax.vmap
    def both(ids, ns):
        def step(c, x):
            st_tok, st_byte = c
            tid, n = x
            st_tok = parser.feed_token(st_tok, tt, tid, jt[tid], n)
            st_byte = parser.feed_bytes(st_byte, jt[tid], n)
            return (st_tok, st_byte), (fields(st_tok), fields(st_byte))
        return jax.lax.scan(step, (parser.init(), parser.init()), (ids, ns))[1]

    by_token, by_byte = jax.device_get(both(ids, ns))
    for name, a, b in zip(("think", "tm", "block", "m_call", "m_check", "m_close", "has_text", "n_calls",
                           "n_checks"), by_token, by_byte):
        np.testing.assert_array_equal(a, b, err_msg=name)


def test_table_entries_for_tags():
    """Exact entries: a whole tag as one token opens its block or closes the think region."""
    pieces = [CALL_OPEN, THINK_CLOSE, b"x", b" "]
    table = np.zeros((len(pieces), 11), np.uint8)
    for i, p in enumerate(pieces):
        table[i, :len(p)] = np.frombuffer(p, np.uint8)
    tt = token_table.build(table, np.array([len(p) for p in pieces], np.int32))
    fields = tt.fields

    def entry(piece, state):
        x = tt.index[np.dot(state, tt.strides)]
        e = tt.trans[tt.cls[pieces.index(piece)], x]
        return tuple(fields[e & 0xFFFF]), e >> 16

    # After "<think>" (think = 1): "</think>" closes the think region (2) and restarts the action state.
    assert entry(THINK_CLOSE, (1, 0, 0, 0, 0, 0)) == ((2, 8, 0, 0, 0, 0), token_table.RESET)
    # In the action region (think = 3): "<tool_call>" opens a call block; "x" is text; " " is not.
    assert entry(CALL_OPEN, (3, 0, 0, 0, 0, 0)) == ((3, 0, 1, 0, 0, 0), token_table.OPEN_CALL)
    assert entry(b"x", (3, 0, 0, 0, 0, 0)) == ((3, 0, 0, 0, 0, 0), token_table.TEXT)
    assert entry(b" ", (3, 0, 0, 0, 0, 0)) == ((3, 0, 0, 0, 0, 0), 0)
    # Inside a call block every byte is the JSON automaton's: the token goes to the byte loop.
    assert entry(b"x", (3, 0, 1, 0, 0, 0))[1] == token_table.TOUCHED
    # Tokens that act alike share a class: "x" and " " differ (text), so the 4 pieces are 4 classes.
    assert len(tt.trans) == 4 and len(tt.fields) == len(token_table.control_automaton()[0])


def _real_tokenizer_case(tok, n_turns: int, seed: int):
    """Hostile turns encoded by a real tokenizer (as text: invalid UTF-8 becomes U+FFFD)."""
    rng = random.Random(seed)
    table, lengths = tok.byte_table()
    turns = [random_turn(rng)[:400] for _ in range(n_turns)]
    return table, lengths, [tok.encode(t.decode("utf-8", "replace")) for t in turns]


def test_builtin_tokenizer():
    from agent_rl import tokenizer as tok_lib

    assert_tokens_agree(*_real_tokenizer_case(tok_lib.builtin_tokenizer(), 300, 4))


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    from agent_rl import tokenizer as tok_lib

    out = tmp_path_factory.mktemp("qwen") / "tokenizer"
    subprocess.run([sys.executable, "-m", "launch.make_qwen_tokenizer", "--out", str(out)], cwd=ROOT, check=True)
    return tok_lib.hf_tokenizer(out)


def test_qwen_tokenizer(qwen):
    table, lengths, toks = _real_tokenizer_case(qwen, 300, 5)
    assert table.shape[0] >= 151665
    assert_tokens_agree(table, lengths, toks)


def test_smollm2_tokenizer():
    directory = ROOT / "models" / "smollm2-135m-instruct"
    if not (directory / "tokenizer.json").exists():
        pytest.skip("SmolLM2 not imported (python launch/import_model.py --out models/smollm2-135m-instruct)")
    from agent_rl import tokenizer as tok_lib

    table, lengths, toks = _real_tokenizer_case(tok_lib.hf_tokenizer(directory), 300, 6)
    assert table.shape[0] == 49152
    assert_tokens_agree(table, lengths, toks)
