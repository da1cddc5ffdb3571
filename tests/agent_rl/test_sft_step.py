"""The SFT step: its loss and gradient are the cross-entropy of the policy's tokens, however it microbatches."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from agent_rl import model as M
from agent_rl import steps as tr

CFG = M.tiny(vocab_size=64, d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, head_dim=16, mlp_dim=64)


def _batch():
    rng = np.random.default_rng(0)
    b, s = 4, 12
    tokens = rng.integers(0, CFG.vocab_size, (b, s)).astype(np.int32)
    valid = np.arange(s)[None] >= np.array([0, 2, 5, 3])[:, None]       # left padding
    mask = valid & (rng.random((b, s)) < 0.4)                             # the policy's tokens
    return jnp.asarray(tokens), jnp.asarray(valid), jnp.asarray(mask)


def _nll(params, graphdef, tokens, valid):
    logits = M.forward(nnx.merge(graphdef, params), tokens, valid)[:, :-1]
    return -jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[:, 1:, None], -1)[..., 0]


@pytest.mark.parametrize("microbatch", [1, 2, 4])
def test_sft_step_matches_cross_entropy_on_policy_tokens(microbatch):
    """Any microbatching gives the whole batch's mean cross-entropy over policy tokens and its gradient."""
    graphdef, params = nnx.split(M.Transformer(CFG, rngs=nnx.Rngs(0)), nnx.Param)
    tokens, valid, mask = _batch()
    w = np.asarray(mask[:, 1:], np.float32)  # prompt, tool responses and padding carry no loss
    want_loss = lambda p: (_nll(p, graphdef, tokens, valid) * w).sum() / w.sum()  # noqa: E731
    want_grads = jax.grad(want_loss)(params)

    tx = optax.sgd(1.0)  # the update is minus the gradient
    before = jax.tree.map(jnp.copy, params)
    after, _, m = tr.sft_step(graphdef, params, tx.init(params), tokens, valid, mask, tx=tx, microbatch=microbatch)
    got_grads = jax.tree.map(lambda a, b: a - b, before, after)
    for g, h in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads)):
        np.testing.assert_allclose(g, h, rtol=2e-4, atol=2e-6)
    np.testing.assert_allclose(float(m["sft/loss"]), float(want_loss(before)), rtol=1e-5)


def test_sequence_logprobs_are_each_tokens_logprob_and_entropy():
    """At s: log p(tokens[s] | tokens[:s]) and the entropy of that prediction at temperature 0.7; 0 at s = 0."""
    graphdef, params = nnx.split(M.Transformer(CFG, rngs=nnx.Rngs(0)), nnx.Param)
    tokens, valid, _ = _batch()
    lp, ent = jax.jit(lambda p: tr.sequence_logprobs(nnx.merge(graphdef, p), tokens, valid, 0.7))(params)
    logp = jax.nn.log_softmax(M.forward(nnx.merge(graphdef, params), tokens, valid)[:, :-1] / 0.7)
    want_lp = jnp.take_along_axis(logp, tokens[:, 1:, None], -1)[..., 0]
    want_ent = -(jnp.exp(logp) * logp).sum(-1)
    assert lp.shape == ent.shape == tokens.shape
    np.testing.assert_array_equal(lp[:, 0], 0.0)
    np.testing.assert_array_equal(ent[:, 0], 0.0)
    np.testing.assert_allclose(lp[:, 1:], want_lp, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ent[:, 1:], want_ent, rtol=1e-5, atol=1e-5)


def test_next_tokens():
    x = jnp.asarray([[1, 2, 3], [4, 5, 6]])
    np.testing.assert_array_equal(tr.next_tokens(x), [[2, 3, 0], [5, 6, 0]])
    np.testing.assert_array_equal(tr.next_tokens(x > 2), [[False, True, False], [True, True, False]])
