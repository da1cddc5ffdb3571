"""A GRPO group's prompt run once (`model.forward_shared`, `rollout.share_prompts`, `grpo.share_prompt`): the same
logits, log-probs and update as every row run in full."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from agent_rl import model as M
from agent_rl import rollout
from agent_rl import run_config
from agent_rl import steps
from configs import micro

CFG = M.tiny(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, mlp_dim=64)


def _groups(n=2, g=4, width=24, seed=0):
    """A trimmed GRPO batch: n groups of g left-aligned rows, each group's rows starting with the same prompt."""
    rng = np.random.default_rng(seed)
    plen = np.repeat(rng.integers(1, 9, n), g)
    prompts = np.repeat(rng.integers(1, CFG.vocab_size, (n, width)), g, axis=0)
    tokens = rng.integers(1, CFG.vocab_size, (n * g, width))
    cols = np.arange(width)[None]
    length = plen + rng.integers(1, width - 8, n * g)
    tokens = np.where(cols < plen[:, None], prompts, tokens)
    valid = cols < length[:, None]
    tokens = np.where(valid, tokens, 0).astype(np.int32)
    policy = valid & (cols >= plen[:, None]) & (rng.random(valid.shape) < 0.7)
    logp = np.where(policy, -rng.random(valid.shape).astype(np.float32) * 3, 0.0).astype(np.float32)
    return rollout.Trajectory(tokens, valid, policy, logp, None), plen


@pytest.mark.parametrize("block", [0, 4])
def test_forward_shared_equals_forward_row_by_row(block):
    model = M.Transformer(CFG, rngs=nnx.Rngs(0))
    traj, plen = _groups()
    sh = rollout.share_prompts(traj, plen, 4, multiple=8)
    got = np.asarray(M.forward_shared(model, sh.prefix, sh.prefix_valid, sh.tokens, sh.valid, block))
    for r in range(traj.tokens.shape[0]):
        n = int(traj.valid[r].sum())
        want = np.asarray(M.forward(model, traj.tokens[r:r + 1, :n], traj.valid[r:r + 1, :n], causal_block=block))
        # row r's logits from its prompt's last token on
        np.testing.assert_allclose(got[r, :n - plen[r] + 1], want[0, plen[r] - 1:], atol=2e-5, rtol=1e-5)


def test_forward_shared_gradient_equals_forward():
    graphdef, params = nnx.split(M.Transformer(CFG, rngs=nnx.Rngs(1)), nnx.Param)
    traj, plen = _groups(seed=3)
    sh = rollout.share_prompts(traj, plen, 4, multiple=8)
    w = np.random.default_rng(0).normal(size=CFG.vocab_size).astype(np.float32)

    def full(p):  # every valid position from the prompt's last token on, rows run in full
        lg = M.forward(nnx.merge(graphdef, p), traj.tokens, traj.valid) @ w
        keep = traj.valid & (np.arange(traj.tokens.shape[1])[None] >= plen[:, None] - 1)
        return jnp.sum(jnp.where(keep, lg, 0.0))

    def shared(p):
        lg = M.forward_shared(nnx.merge(graphdef, p), sh.prefix, sh.prefix_valid, sh.tokens, sh.valid) @ w
        return jnp.sum(jnp.where(sh.valid, lg, 0.0))

    np.testing.assert_allclose(float(shared(params)), float(full(params)), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(jax.grad(shared)(params)), jax.tree.leaves(jax.grad(full)(params))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_share_prompts_layout():
    traj, plen = _groups(n=3, g=2, seed=5)
    sh = rollout.share_prompts(traj, plen, 2, multiple=8, prompt_multiple=8)
    assert sh.prefix.shape == (3, 8) and sh.tokens.shape[1] % 8 == 0
    np.testing.assert_array_equal(sh.prefix_valid.sum(1), plen[::2] - 1)
    for r in range(6):
        n, c = int(traj.valid[r].sum()), plen[r] - 1
        row = np.concatenate([sh.prefix[r // 2][:c], sh.tokens[r][sh.valid[r]]])
        np.testing.assert_array_equal(row, traj.tokens[r, :n])  # prompt + continuation = the row, token for token
        np.testing.assert_array_equal(sh.policy_mask[r][sh.valid[r]], traj.policy_mask[r, c:n])
        np.testing.assert_array_equal(sh.logprobs[r][sh.valid[r]], traj.logprobs[r, c:n])
        assert not sh.policy_mask[r][~sh.valid[r]].any()


def test_share_prompts_refuses_a_group_with_two_prompts():
    traj, plen = _groups(n=2, g=4)
    tokens = traj.tokens.copy()
    tokens[5, 0] += 1  # group 1's second row
    with pytest.raises(ValueError, match="GRPO group 1 hold different prompts"):
        rollout.share_prompts(traj._replace(tokens=tokens), plen, 4)


@pytest.mark.parametrize("microbatch,beta", [(2, 0.0), (4, 0.05), (8, 0.05)])
def test_grpo_update_shared_equals_rows_in_full(microbatch, beta):
    """One minibatch of the whole batch: the same sums, so the same update (up to float reduction order)."""
    graphdef, params = nnx.split(M.Transformer(CFG, rngs=nnx.Rngs(2)), nnx.Param)
    traj, plen = _groups(n=2, g=4, seed=7)
    ref = jax.tree.map(lambda x: x + 0.01, params)
    adv = jnp.asarray(np.random.default_rng(1).normal(size=8), jnp.float32)
    hp = steps.GrpoHP(minibatch_size=8, microbatch=microbatch, mu=1, eps_low=0.2, eps_high=0.28, beta=beta,
                      kl_estimator="k3", aggregation="token_mean", constant_norm=0.0, temperature=0.9)
    tx = optax.sgd(1.0)
    run = lambda batch: steps.grpo_update(  # noqa: E731
        graphdef, jax.tree.map(jnp.copy, params), tx.init(params), ref, batch, adv, jax.random.key(0), tx=tx, hp=hp)
    p_full, _, m_full = run(jax.tree.map(jnp.asarray, traj))
    p_shared, _, m_shared = run(jax.tree.map(jnp.asarray, rollout.share_prompts(traj, plen, 4, multiple=8)))
    np.testing.assert_allclose(float(m_shared["loss"]), float(m_full["loss"]), rtol=1e-5, atol=1e-7)
    for a, b in zip(jax.tree.leaves(p_shared), jax.tree.leaves(p_full)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_share_prompt_needs_whole_groups_per_minibatch():
    c = micro.get_config()
    c.grpo.update(n_scenarios=4, group_size=4, minibatch_size=8, microbatch=8)
    run_config.validate(c)
    c.grpo.minibatch_size = 6
    c.grpo.n_scenarios = 3  # 12 rows: minibatches of 6 split it, but cut a group in two
    with pytest.raises(run_config.ConfigError, match=r"config.grpo.minibatch_size=6: must be a multiple of"):
        run_config.validate(c)
    c.grpo.update(minibatch_size=12, microbatch=6)
    with pytest.raises(run_config.ConfigError, match=r"config.grpo.microbatch=6: must be a multiple or a divisor"):
        run_config.validate(c)
    c.grpo.share_prompt = False
    run_config.validate(c)
