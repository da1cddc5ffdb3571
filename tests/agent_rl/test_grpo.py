"""GRPO losses against values worked out by hand on a small batch."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from agent_rl import grpo

LN2 = math.log(2.0)

# ---------------------------------------------------------------------------------------------
# Hand example: 2 groups x 2 samples = 4 sequences, 3 tokens, eps_low = 0.2, eps_high = 0.3,
# so the ratio is clipped to [0.8, 1.3]. old_logp = 0, so logp = log(ratio).
#   seq 0, A = +1.0, r = [1.5, 1.1, 0.5], mask [1 1 1]: 1.5 clipped high (loss -1.3, no grad);
#          1.1 unclipped (-1.1); 0.5 below the range but A > 0 so min() keeps r (-0.5).
#   seq 1, A = -1.0, r = [0.7, 1.2, 2.0], mask [1 1 1]: 0.7 clipped low (loss 0.8, no grad);
#          1.2 unclipped (1.2); 2.0 above the range but A < 0 so min() keeps r (2.0).
#   seq 2, A = +0.5, r = [1.0, 1.2, 3.0], mask [1 1 0]: -0.5, -0.6, masked.
#   seq 3, A = -0.5, r = [0.9, 5.0, 5.0], mask [1 0 0]: 0.45, masked, masked.
# Per-sequence loss sums: -2.9, 4.0, -1.1, 0.45; total 0.45 over 9 tokens.
RATIOS = np.array([[1.5, 1.1, 0.5], [0.7, 1.2, 2.0], [1.0, 1.2, 3.0], [0.9, 5.0, 5.0]], np.float32)
ADV = np.array([1.0, -1.0, 0.5, -0.5], np.float32)
MASK = np.array([[1, 1, 1], [1, 1, 1], [1, 1, 0], [1, 0, 0]], np.float32)
LOGP = np.log(RATIOS)
OLD = np.zeros_like(LOGP)
# d loss_sum / d logp = -A * r on unclipped loss tokens, 0 on clipped or masked ones.
GRAD_SUM = np.array([[0.0, -1.1, -0.5], [0.0, 1.2, 2.0], [-0.5, -0.6, 0.0], [0.45, 0.0, 0.0]], np.float32)
CLIP = dict(eps_low=0.2, eps_high=0.3)


def _loss(aggregation, logp=LOGP, constant_norm=None, **kw):
    return grpo.policy_loss(jnp.asarray(logp), OLD, ADV, MASK, aggregation=aggregation,
                            constant_norm=constant_norm, **CLIP, **kw)


def _grad_of_sum(aggregation, **kw):
    return np.asarray(jax.grad(lambda lp: _loss(aggregation, lp, **kw)[0])(jnp.asarray(LOGP)))


# --- group advantages --------------------------------------------------------------------------

def test_group_advantages_std_and_mean():
    # group [0, 2, 4]: mean 2, sample std (ddof=1) sqrt((4 + 0 + 4) / 2) = 2; group [4, 4, 4]: all 0.
    rewards = jnp.array([[0.0, 2.0, 4.0], [4.0, 4.0, 4.0]])
    np.testing.assert_allclose(grpo.group_advantages(rewards, "std", eps=0.0)[0], [-1, 0, 1], rtol=1e-6)
    np.testing.assert_array_equal(grpo.group_advantages(rewards, "std", eps=1e-6)[1], [0, 0, 0])
    np.testing.assert_allclose(grpo.group_advantages(rewards, "mean"), [[-2, 0, 2], [0, 0, 0]])


def test_group_advantages_two_samples_and_eps():
    # [1, 0]: mean 0.5, std sqrt(0.5) -> +-0.5 / (sqrt(0.5) + eps).
    eps = 0.1
    got = grpo.group_advantages(jnp.array([[1.0, 0.0]]), "std", eps=eps)
    want = 0.5 / (math.sqrt(0.5) + eps)
    np.testing.assert_allclose(got, [[want, -want]], rtol=1e-6)


def test_group_advantages_flat_matches_2d():
    rewards = jnp.array([0.0, 2.0, 4.0, 1.0, 1.0, 3.0])
    flat = grpo.group_advantages(rewards, "std", group_size=3)
    assert flat.shape == (6,) and flat.dtype == jnp.float32
    np.testing.assert_allclose(flat, grpo.group_advantages(rewards.reshape(2, 3), "std").reshape(-1))
    np.testing.assert_allclose(grpo.group_advantages(rewards, "mean", group_size=3),
                               [-2, 0, 2, -2 / 3, -2 / 3, 4 / 3], rtol=1e-6)


def test_group_advantages_bad_input():
    with pytest.raises(ValueError, match="group_size"):
        grpo.group_advantages(jnp.zeros(6))
    with pytest.raises(ValueError, match="groups of 4"):
        grpo.group_advantages(jnp.zeros(6), group_size=4)
    with pytest.raises(ValueError, match="mode"):
        grpo.group_advantages(jnp.zeros((2, 2)), mode="rank")
    with pytest.raises(ValueError, match="at least 2"):
        grpo.group_advantages(jnp.zeros((2, 1)), mode="std")



def test_tied_groups_are_the_groups_without_advantage():
    rewards = jnp.array([[1.0, 1.0, 1.0], [0.0, 1.0, 0.0], [-0.5, -0.5, -0.5], [2.5, 2.5, 2.4]])
    tied = grpo.tied_groups(rewards)
    assert tied.dtype == jnp.bool_ and tied.tolist() == [True, False, True, False]
    for mode in grpo.ADVANTAGE_MODES:  # exact zeros for these rewards (their means are exact in float32)
        adv = grpo.group_advantages(rewards, mode)
        assert (jnp.all(adv == 0, axis=1) == tied).all(), mode


@settings(deadline=None, max_examples=50)
@given(st.lists(st.lists(st.sampled_from([-1.4, -0.4, 0.0, 0.1, 1.1, 2.5]), min_size=2, max_size=2),
                min_size=1, max_size=8))
def test_tied_groups_matches_a_set_of_rewards(rows):
    tied = grpo.tied_groups(jnp.array(rows))
    assert tied.tolist() == [len(set(np.float32(r).tolist())) == 1 for r in rows]

# --- KL estimators -------------------------------------------------------------------------------

# d = ref - logp = [0, ln 2, -ln 2]
KL_LOGP = jnp.array([[-1.0, -1.0, -1.0]])
KL_REF = jnp.array([[-1.0, -1.0 + LN2, -1.0 - LN2]])


def test_kl_estimators_values():
    np.testing.assert_allclose(grpo.kl_penalty(KL_LOGP, KL_REF, "k1"), [[0.0, -LN2, LN2]], atol=1e-6)
    np.testing.assert_allclose(grpo.kl_penalty(KL_LOGP, KL_REF, "k2"), [[0.0, LN2**2 / 2, LN2**2 / 2]], atol=1e-6)
    # k3 = e^d - d - 1: 0; 2 - ln2 - 1 = 0.306853; 0.5 + ln2 - 1 = 0.193147
    np.testing.assert_allclose(grpo.kl_penalty(KL_LOGP, KL_REF, "k3"), [[0.0, 0.306853, 0.193147]], atol=1e-6)
    with pytest.raises(ValueError, match="estimator"):
        grpo.kl_penalty(KL_LOGP, KL_REF, "k4")


def test_kl_estimator_gradients():
    # d k1 / d logp = 1;  d k3 / d logp = 1 - e^d = [0, -1, 0.5]
    g1 = jax.grad(lambda lp: grpo.kl_penalty(lp, KL_REF, "k1").sum())(KL_LOGP)
    g3 = jax.grad(lambda lp: grpo.kl_penalty(lp, KL_REF, "k3").sum())(KL_LOGP)
    np.testing.assert_allclose(g1, [[1.0, 1.0, 1.0]], atol=1e-6)
    np.testing.assert_allclose(g3, [[0.0, -1.0, 0.5]], atol=1e-6)


# --- policy loss ---------------------------------------------------------------------------------

def test_token_mean():
    loss_sum, denom, metrics = _loss("token_mean")
    np.testing.assert_allclose(loss_sum, 0.45, atol=1e-5)
    assert float(denom) == 9.0
    np.testing.assert_allclose(_grad_of_sum("token_mean"), GRAD_SUM, atol=1e-5)
    # one token clipped on each side, out of 9 loss tokens; masked r = 5.0 never counts.
    np.testing.assert_allclose(metrics["clip_frac_low"], 1 / 9, rtol=1e-6)
    np.testing.assert_allclose(metrics["clip_frac_high"], 1 / 9, rtol=1e-6)
    np.testing.assert_allclose(metrics["ratio_mean"], 10.1 / 9, rtol=1e-6)
    r = RATIOS[MASK > 0]
    np.testing.assert_allclose(metrics["approx_kl"], np.mean(r - 1 - np.log(r)), rtol=1e-5)
    assert float(metrics["tokens"]) == 9.0
    assert "ref_kl" not in metrics


def test_seq_mean_token_mean():
    # per-sequence means -2.9/3, 4/3, -1.1/2, 0.45/1 -> sum 8/30 over 4 sequences.
    loss_sum, denom, _ = _loss("seq_mean_token_mean")
    np.testing.assert_allclose(loss_sum, 8 / 30, atol=1e-5)
    assert float(denom) == 4.0
    lengths = np.array([3, 3, 2, 1], np.float32)[:, None]
    np.testing.assert_allclose(_grad_of_sum("seq_mean_token_mean"), GRAD_SUM / lengths, atol=1e-5)


def test_constant_norm():
    # Dr. GRPO: token sums / 3 averaged over 4 sequences -> denominator 4 * 3.
    loss_sum, denom, _ = _loss("constant", constant_norm=3.0)
    np.testing.assert_allclose(loss_sum, 0.45, atol=1e-5)
    assert float(denom) == 12.0
    np.testing.assert_allclose(_grad_of_sum("constant", constant_norm=3.0), GRAD_SUM, atol=1e-5)
    with pytest.raises(ValueError, match="constant_norm"):
        _loss("constant")
    with pytest.raises(ValueError, match="aggregation"):
        _loss("sum")


def test_symmetric_clip_changes_only_the_high_token():
    # eps_high = 0.2: seq 0 token 0 now contributes -1.2 instead of -1.3; seq 2 token 1 (r = 1.2,
    # A > 0) sits exactly on the bound, min() gives the same value -0.6 either way.
    loss_sum, _, _ = grpo.policy_loss(jnp.asarray(LOGP), OLD, ADV, MASK, eps_low=0.2, eps_high=0.2)
    np.testing.assert_allclose(loss_sum, 0.45 + 0.1, atol=1e-5)


def test_kl_term_added_with_beta():
    # ratio 1 everywhere and A = 0: the surrogate is 0, the loss is beta * sum of masked k3.
    logp = jnp.full((1, 3), -1.0)
    adv = jnp.zeros((1,))
    mask = jnp.array([[1.0, 1.0, 0.0]])   # the third token (k3 = 0.193147) is masked out
    loss_sum, denom, metrics = grpo.policy_loss(logp, logp, adv, mask, beta=0.5, ref_logp=KL_REF,
                                                kl_estimator="k3")
    np.testing.assert_allclose(loss_sum, 0.5 * 0.306853, atol=1e-6)
    assert float(denom) == 2.0
    np.testing.assert_allclose(metrics["ref_kl"], 0.306853 / 2, atol=1e-6)
    # gradient: surrogate -A r = 0, KL: beta * (1 - e^d) = 0.5 * [0, -1, masked]
    g = jax.grad(lambda lp: grpo.policy_loss(lp, logp, adv, mask, beta=0.5, ref_logp=KL_REF)[0])(logp)
    np.testing.assert_allclose(g, [[0.0, -0.5, 0.0]], atol=1e-6)
    loss_k1, _, _ = grpo.policy_loss(logp, logp, adv, mask, beta=0.5, ref_logp=KL_REF, kl_estimator="k1")
    np.testing.assert_allclose(loss_k1, 0.5 * (0.0 - LN2), atol=1e-6)


def test_beta_zero_ignores_ref():
    plain = _loss("token_mean")
    with_garbage_ref = _loss("token_mean", beta=0.0, ref_logp=jnp.full(LOGP.shape, jnp.nan))
    np.testing.assert_array_equal(plain[0], with_garbage_ref[0])
    assert "ref_kl" not in with_garbage_ref[2]
    with pytest.raises(ValueError, match="ref_logp"):
        _loss("token_mean", beta=0.1)


def test_old_logp_and_advantages_get_no_gradient():
    g_old = jax.grad(lambda o: grpo.policy_loss(jnp.asarray(LOGP), o, ADV, MASK, **CLIP)[0])(jnp.asarray(OLD))
    g_adv = jax.grad(lambda a: grpo.policy_loss(jnp.asarray(LOGP), OLD, a, MASK, **CLIP)[0])(jnp.asarray(ADV))
    np.testing.assert_array_equal(g_old, 0.0)
    np.testing.assert_array_equal(g_adv, 0.0)


@pytest.mark.parametrize("aggregation", grpo.AGGREGATIONS)
def test_microbatch_sums_equal_full_batch(aggregation):
    kw = dict(aggregation=aggregation, constant_norm=3.0, beta=0.1, ref_logp=jnp.asarray(LOGP) - 0.3, **CLIP)

    def loss_and_grad(rows):
        def f(lp):
            s, d, _ = grpo.policy_loss(lp, OLD[rows], ADV[rows], MASK[rows],
                                       **{**kw, "ref_logp": kw["ref_logp"][rows]})
            return s, d
        (s, d), g = jax.value_and_grad(f, has_aux=True)(jnp.asarray(LOGP[rows]))
        return s, d, g

    s, d, g = loss_and_grad(slice(0, 4))
    s1, d1, g1 = loss_and_grad(slice(0, 1))
    s2, d2, g2 = loss_and_grad(slice(1, 4))
    # rtol: a few float32 roundings, as the two sides associate their sums differently (XLA's CPU backend fuses them
    # differently at each optimisation level)
    np.testing.assert_allclose((s1 + s2) / (d1 + d2), s / d, rtol=4e-6)
    # the gradient of the total is the sum of the microbatch gradients over the total denominator
    np.testing.assert_allclose(np.concatenate([g1, g2]) / float(d1 + d2), g / d, rtol=1e-6)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), split=st.integers(1, 5),
       aggregation=st.sampled_from(grpo.AGGREGATIONS))
def test_microbatch_property_random(seed, split, aggregation):
    rng = np.random.default_rng(seed)
    b, t = 6, 5
    logp = rng.normal(-1.0, 0.5, (b, t)).astype(np.float32)
    old = logp + rng.normal(0.0, 0.3, (b, t)).astype(np.float32)
    adv = rng.normal(size=b).astype(np.float32)
    mask = (rng.random((b, t)) < 0.6).astype(np.float32)
    kw = dict(aggregation=aggregation, constant_norm=float(t), eps_low=0.2, eps_high=0.28)
    s, d, _ = grpo.policy_loss(logp, old, adv, mask, **kw)
    s1, d1, _ = grpo.policy_loss(logp[:split], old[:split], adv[:split], mask[:split], **kw)
    s2, d2, _ = grpo.policy_loss(logp[split:], old[split:], adv[split:], mask[split:], **kw)
    np.testing.assert_allclose(s1 + s2, s, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(d1 + d2, d, rtol=1e-6)


def test_policy_loss_jits():
    f = jax.jit(lambda lp: _loss("seq_mean_token_mean", lp)[:2])
    s, d = f(jnp.asarray(LOGP))
    np.testing.assert_allclose(s, 8 / 30, atol=1e-5)
    assert float(d) == 4.0


# --- logits helpers ------------------------------------------------------------------------------

# probs [1/4, 1/4, 1/2]
LOGITS = jnp.array([[[0.0, 0.0, LN2], [0.0, 0.0, 0.0]]])


def test_token_logprobs_and_entropy():
    tokens = jnp.array([[2, 0]])
    np.testing.assert_allclose(grpo.token_logprobs(LOGITS, tokens), [[-LN2, -math.log(3)]], atol=1e-6)
    # H = -(2 * 1/4 ln 1/4 + 1/2 ln 1/2) = 1.5 ln 2 ; uniform over 3: ln 3
    np.testing.assert_allclose(grpo.token_entropy(LOGITS), [[1.5 * LN2, math.log(3)]], atol=1e-6)


def test_logits_helpers_are_stable():
    shifted = LOGITS + 1e4
    tokens = jnp.array([[2, 0]])
    np.testing.assert_allclose(grpo.token_logprobs(shifted, tokens), [[-LN2, -math.log(3)]], atol=1e-3)
    np.testing.assert_allclose(grpo.token_entropy(shifted), [[1.5 * LN2, math.log(3)]], atol=1e-3)
    peaked = jnp.array([[[0.0, -1e4, -1e4]]], jnp.bfloat16)
    assert np.isfinite(grpo.token_entropy(peaked)).all()
    np.testing.assert_allclose(grpo.token_entropy(peaked), 0.0, atol=1e-6)
    np.testing.assert_allclose(grpo.token_logprobs(peaked, jnp.array([[1]])), -1e4, rtol=1e-2)


def test_sft_loss_value_and_gradient():
    targets = jnp.array([[2, 1]])
    mask = jnp.array([[1.0, 0.0]])
    s, d = grpo.sft_loss(LOGITS, targets, mask)
    np.testing.assert_allclose(s, LN2, atol=1e-6)
    assert float(d) == 1.0
    # d(-log softmax_y)/dz = softmax - onehot(y) on the unmasked position, 0 elsewhere
    g = jax.grad(lambda z: grpo.sft_loss(z, targets, mask)[0])(LOGITS)
    np.testing.assert_allclose(g, [[[0.25, 0.25, -0.5], [0.0, 0.0, 0.0]]], atol=1e-6)


# --- minibatches ---------------------------------------------------------------------------------

def test_minibatches():
    idx = jax.jit(grpo.minibatches, static_argnums=(1, 2, 3))(jax.random.key(0), 12, 4, 2)
    assert idx.shape == (6, 4) and idx.dtype == jnp.int32
    epochs = np.asarray(idx).reshape(2, 12)
    for epoch in epochs:
        np.testing.assert_array_equal(np.sort(epoch), np.arange(12))
    assert not np.array_equal(epochs[0], epochs[1])
    np.testing.assert_array_equal(idx, grpo.minibatches(jax.random.key(0), 12, 4, 2))
    with pytest.raises(ValueError, match="minibatches of 5"):
        grpo.minibatches(jax.random.key(0), 12, 5)
