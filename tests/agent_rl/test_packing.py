"""SFT packing: packed rows hold every demonstration intact, keep them apart in attention, and train identically."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from hypothesis import given, settings, strategies as st

from agent_rl import model as M
from agent_rl import packing
from agent_rl import steps as tr

CFG = M.tiny(vocab_size=64, d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, head_dim=16, mlp_dim=64)


def _rows(lengths, width, seed=0):
    """Left-aligned rows of the given lengths: tokens int32[B, width], valid, mask (the policy's tokens)."""
    rng = np.random.default_rng(seed)
    b = len(lengths)
    tokens = rng.integers(1, CFG.vocab_size, (b, width)).astype(np.int32)
    valid = np.arange(width)[None] < np.asarray(lengths)[:, None]
    tokens = np.where(valid, tokens, 0)
    mask = valid & (rng.random((b, width)) < 0.5)
    return tokens, valid, mask


def _unpack(p: packing.Packed):
    """Each packed sequence as (tokens, mask) in row order."""
    out = []
    for t, s, m in zip(p.tokens, p.segments, p.mask):
        for k in range(1, int(s.max(initial=0)) + 1):
            at = np.flatnonzero(s == k)
            assert np.array_equal(at, np.arange(at[0], at[0] + len(at))), "a sequence is one run"
            out.append((t[at], m[at]))
    return out


def test_positions_from_segments():
    seg = jnp.asarray([[1, 1, 1, 2, 2, 0, 0], [0, 0, 1, 1, 1, 1, 1], [1, 2, 3, 3, 0, 0, 0]])
    np.testing.assert_array_equal(M.positions_from_segments(seg),
                                  [[0, 1, 2, 0, 1, 0, 1], [0, 1, 0, 1, 2, 3, 4], [0, 0, 0, 1, 0, 1, 2]])
    # one sequence per row (segments = valid): the positions `forward` uses, on every valid token
    valid = jnp.asarray([[False, False, True, True, True], [True, True, True, True, False]])
    got = M.positions_from_segments(valid.astype(jnp.int32))
    np.testing.assert_array_equal(jnp.where(valid, got, 0), jnp.where(valid, M.positions_from_valid(valid), 0))


def test_pack_chooses_fewer_slots_and_splits_into_microbatches():
    lengths = [200, 60, 70, 50, 40, 90, 30, 100]
    tokens, valid, mask = _rows(lengths, 224)
    p = packing.pack(tokens, valid, mask, row_multiple=2)
    r, w = p.tokens.shape
    assert r % 2 == 0 and w % 32 == 0
    assert r * w < len(lengths) * 224  # fewer slots than one row per demonstration
    assert int((p.segments > 0).sum()) == sum(lengths)
    # every demonstration once, intact, its mask kept except on its first token (nothing of its own predicts it)
    want = sorted((tuple(tokens[i, :n]), tuple(mask[i, 1:n])) for i, n in enumerate(lengths))
    got = sorted((tuple(t), tuple(m[1:])) for t, m in _unpack(p))
    assert got == want
    assert not any(m[0] for _, m in _unpack(p))


def test_pack_rejects_rows_that_are_not_left_aligned():
    tokens, valid, mask = _rows([3, 4], 6)
    with pytest.raises(ValueError, match="left-aligned"):
        packing.pack(tokens, np.roll(valid, 1, axis=1), mask, row_multiple=1)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 300), min_size=1, max_size=24), st.sampled_from([1, 2, 4, 8]))
def test_pack_keeps_every_token(lengths, row_multiple):
    """Any batch: every non-empty demonstration exactly once, rows a multiple of row_multiple, no row longer than
    greedy list scheduling allows (the average row plus the longest demonstration), never more slots than unpacked."""
    width = max(32, -(-max(lengths) // 32) * 32)
    tokens, valid, mask = _rows(lengths, width)
    p = packing.pack(tokens, valid, mask, row_multiple=row_multiple)
    r, w = p.tokens.shape
    assert r % row_multiple == 0 and w % 32 == 0
    assert r * w <= -(-len(lengths) // row_multiple) * row_multiple * width
    want = sorted(tuple(tokens[i, :n]) for i, n in enumerate(lengths) if n)
    assert sorted(tuple(t) for t, _ in _unpack(p)) == want
    longest_row = int(np.max((p.segments > 0).sum(1)))
    assert longest_row <= sum(lengths) / r + max(lengths)
    assert not np.any(p.mask & (p.segments == 0))


def test_forward_packed_equals_each_sequence_alone():
    lengths = [9, 4, 12, 7, 3]
    tokens, valid, mask = _rows(lengths, 16)
    p = packing.pack(tokens, valid, mask, row_multiple=1, multiple=8)
    assert p.tokens.shape[0] < len(lengths)  # some row holds two sequences
    model = M.Transformer(CFG, rngs=nnx.Rngs(0))
    packed = M.forward_packed(model, jnp.asarray(p.tokens), jnp.asarray(p.segments), causal_block=8)
    alone = M.forward(model, jnp.asarray(tokens), jnp.asarray(valid), causal_block=0)
    seqs = {tuple(tokens[i, :n]): i for i, n in enumerate(lengths)}
    for row in range(p.tokens.shape[0]):
        for k in range(1, int(p.segments[row].max()) + 1):
            at = np.flatnonzero(p.segments[row] == k)
            i = seqs[tuple(p.tokens[row, at])]
            np.testing.assert_allclose(packed[row, at], alone[i, :len(at)], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("row_multiple", [1, 2])
def test_sft_step_on_packed_rows_matches_unpacked(row_multiple):
    """The same demonstrations packed or one per row: the same loss and gradient (sum over policy tokens / count)."""
    lengths = [14, 5, 9, 3, 11, 6, 2, 8]
    tokens, valid, mask = _rows(lengths, 16, seed=1)
    p = packing.pack(tokens, valid, mask, row_multiple=row_multiple, multiple=8)
    assert p.tokens.shape[0] < len(lengths)
    graphdef, params = nnx.split(M.Transformer(CFG, rngs=nnx.Rngs(0)), nnx.Param)
    tx = optax.sgd(1.0)  # the update is minus the gradient
    step = lambda *batch: tr.sft_step(graphdef, jax.tree.map(jnp.copy, params), tx.init(params), *batch,  # noqa: E731
                                      tx=tx, microbatch=row_multiple)
    after_u, _, m_u = step(jnp.asarray(tokens), jnp.asarray(valid), jnp.asarray(mask))
    after_p, _, m_p = step(jnp.asarray(p.tokens), jnp.asarray(p.segments), jnp.asarray(p.mask))
    np.testing.assert_allclose(float(m_p["sft/loss"]), float(m_u["sft/loss"]), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(after_p), jax.tree.leaves(after_u)):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6)
