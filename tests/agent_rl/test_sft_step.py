"""The SFT step: its gradient is that of the weighted cross-entropy it documents, and sft/loss is the policy tokens'."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from agent_rl import model as M
from agent_rl import train as tr

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


@pytest.mark.parametrize("context_weight", [0.0, 0.25])
def test_sft_step_matches_weighted_cross_entropy(context_weight):
    graphdef, params = nnx.split(M.Transformer(CFG, rngs=nnx.Rngs(0)), nnx.Param)
    tokens, valid, mask = _batch()
    # Hand-written: weight 1 on policy targets, context_weight on other real targets, 0 on padding.
    w = np.where(mask[:, 1:], 1.0, np.where(valid[:, 1:], context_weight, 0.0))
    want_loss = lambda p: (_nll(p, graphdef, tokens, valid) * w).sum() / w.sum()  # noqa: E731
    want_grads = jax.grad(want_loss)(params)
    policy_mean = float((_nll(params, graphdef, tokens, valid) * mask[:, 1:]).sum() / mask[:, 1:].sum())

    tx = optax.sgd(1.0)  # the update is minus the gradient
    before = jax.tree.map(jnp.copy, params)
    after, _, m = tr.sft_step(graphdef, params, tx.init(params), tokens, valid, mask, tx=tx, microbatch=2,
                              context_weight=context_weight)
    got_grads = jax.tree.map(lambda a, b: a - b, before, after)
    for g, h in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads)):
        np.testing.assert_allclose(g, h, rtol=2e-4, atol=2e-6)
    np.testing.assert_allclose(float(m["sft/loss"]), policy_mean, rtol=1e-5)


def test_context_weight_changes_the_gradient():
    graphdef, params = nnx.split(M.Transformer(CFG, rngs=nnx.Rngs(0)), nnx.Param)
    tokens, valid, mask = _batch()
    tx = optax.sgd(1.0)
    outs = [tr.sft_step(graphdef, jax.tree.map(jnp.copy, params), tx.init(params), tokens, valid, mask, tx=tx,
                        microbatch=4, context_weight=w) for w in (0.0, 1.0)]
    diff = max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(outs[0][0]), jax.tree.leaves(outs[1][0])))
    assert diff > 1e-4
    np.testing.assert_allclose(float(outs[0][2]["sft/loss"]), float(outs[1][2]["sft/loss"]), rtol=1e-6)
