"""GRPO losses as pure functions: group advantages, KL estimators, the clipped surrogate, SFT.

Every loss returns `(loss_sum, denominator)` instead of a mean. The loss that is optimised is
`total_sum / total_denominator`, where the caller sums both over microbatches (gradient
accumulation) or devices (`psum`) before dividing. Each denominator is a count of things
present in the batch (tokens, or sequences), so any split of a batch into pieces gives the same
totals, hence the same loss and gradient, as the whole batch at once.

Shapes: `B` sequences, `T` time steps, `V` vocabulary, `N` prompts, `G` samples per prompt.
`mask[b, t] = 1` marks tokens the policy sampled (env-inserted and padding tokens are 0).

Math checked against tunix `rl/grpo/grpo_helpers.py` and verl `trainer/ppo/core_algos.py`
(clip-higher from DAPO, Dr. GRPO's mean-only advantages and constant normaliser, k1/k3 from
Schulman's "Approximating KL divergence").
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

ADVANTAGE_MODES = ("std", "mean")
KL_ESTIMATORS = ("k1", "k2", "k3")
AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "constant")


def group_advantages(rewards: jax.Array, mode: str = "std", eps: float = 1e-6,
                     group_size: int | None = None) -> jax.Array:
    """Group-relative advantages, one per sample.

    Args:
      rewards: f32[N, G] (row = the G samples of one prompt), or flat f32[N * G] with
        `group_size=G` (samples of a prompt contiguous).
      mode: "std": (r - mean) / (std + eps), std with Bessel's correction (ddof=1) as in tunix
        and verl; "mean": r - mean (Dr. GRPO, no std division, so no difficulty bias).
      eps: added to the std so that groups with equal rewards get zero advantage, not NaN.
      group_size: required for flat rewards; checked against G for 2-D rewards.

    Returns:
      f32 advantages with the shape of `rewards`.
    """
    if mode not in ADVANTAGE_MODES:
        raise ValueError(f"group_advantages: mode must be one of {ADVANTAGE_MODES}, got {mode!r}")
    rewards = jnp.asarray(rewards, jnp.float32)
    shape = rewards.shape
    if rewards.ndim == 1:
        if group_size is None:
            raise ValueError("group_advantages: flat rewards [N*G] need group_size=G")
        if group_size < 1 or shape[0] % group_size:
            raise ValueError(f"group_advantages: {shape[0]} rewards do not split into groups of {group_size}")
        rewards = rewards.reshape(-1, group_size)
    elif rewards.ndim != 2:
        raise ValueError(f"group_advantages: rewards must be [N, G] or [N*G], got shape {shape}")
    elif group_size is not None and group_size != shape[1]:
        raise ValueError(f"group_advantages: group_size={group_size} but rewards have G={shape[1]}")
    if mode == "std" and rewards.shape[1] < 2:
        raise ValueError("group_advantages: mode='std' needs at least 2 samples per group")

    centred = rewards - rewards.mean(axis=1, keepdims=True)
    if mode == "std":
        centred = centred / (rewards.std(axis=1, ddof=1, keepdims=True) + eps)
    return centred.reshape(shape)


def tied_groups(rewards: jax.Array) -> jax.Array:
    """bool[N]: the groups whose G samples all earned the same reward (rewards f32[N, G]). Their advantages are 0
    in every mode, so they add no policy gradient: only the KL term and, under token-mean aggregation, tokens to
    the denominator. The share of them says how much of a step's sampling taught nothing."""
    rewards = jnp.asarray(rewards, jnp.float32)
    return rewards.max(axis=1) == rewards.min(axis=1)


def kl_penalty(logp: jax.Array, ref_logp: jax.Array, estimator: str = "k3") -> jax.Array:
    """Per-token estimate of KL(pi || pi_ref) from tokens sampled from pi.

    With d = ref_logp - logp:
      k1 = -d                  (unbiased, can be negative)
      k2 = d**2 / 2            (biased, low variance)
      k3 = exp(d) - d - 1      (unbiased, always >= 0; the GRPO paper's choice)

    Args:
      logp, ref_logp: f32[B, T] log-probabilities of the sampled tokens.
    Returns:
      f32[B, T].
    """
    d = ref_logp.astype(jnp.float32) - logp.astype(jnp.float32)
    if estimator == "k1":
        return -d
    if estimator == "k2":
        return 0.5 * jnp.square(d)
    if estimator == "k3":
        return jnp.expm1(d) - d
    raise ValueError(f"kl_penalty: estimator must be one of {KL_ESTIMATORS}, got {estimator!r}")


def token_weights(mask: jax.Array, aggregation: str = "token_mean",
                  constant_norm: float | None = None) -> tuple[jax.Array, jax.Array]:
    """Per-token weights and the denominator that turn per-token losses into a (sum, denominator).

    loss = sum(per_token * weights) / denominator, with
      token_mean:           weights = mask,         denominator = number of tokens
      seq_mean_token_mean:  weights = mask / len_b, denominator = number of sequences with tokens
      constant:             weights = mask,         denominator = constant_norm * number of
                            sequences with tokens (Dr. GRPO: mean over sequences of
                            token_sum / constant_norm, e.g. constant_norm = max generation length)

    Args:
      mask: [B, T], 1 for loss tokens.
    Returns:
      (f32[B, T] weights, f32[] denominator).
    """
    mask = mask.astype(jnp.float32)
    lengths = mask.sum(axis=1)                                    # [B]
    n_seqs = (lengths > 0).sum().astype(jnp.float32)
    if aggregation == "token_mean":
        return mask, lengths.sum()
    if aggregation == "seq_mean_token_mean":
        return mask / jnp.maximum(lengths, 1.0)[:, None], n_seqs
    if aggregation == "constant":
        if constant_norm is None or constant_norm <= 0:
            raise ValueError(f"aggregation='constant' needs constant_norm > 0, got {constant_norm!r}")
        return mask, n_seqs * constant_norm
    raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")


def _masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    return (x * mask).sum() / jnp.maximum(mask.sum(), 1.0)


def policy_loss(logp: jax.Array, old_logp: jax.Array, advantages: jax.Array, mask: jax.Array, *,
                eps_low: float = 0.2, eps_high: float = 0.2, beta: float = 0.0,
                ref_logp: jax.Array | None = None, kl_estimator: str = "k3",
                aggregation: str = "token_mean", constant_norm: float | None = None,
                ) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """GRPO clipped surrogate with clip-higher and an optional KL penalty to a frozen reference.

    Per token, with r = exp(logp - old_logp) and A the sequence's advantage:
      loss_t = -min(r * A, clip(r, 1 - eps_low, 1 + eps_high) * A) + beta * KL_t
    aggregated by `token_weights` into (loss_sum, denominator); the loss is their ratio after
    summing both over all microbatches and devices.

    Args:
      logp: f32[B, T] log-probs of the sampled tokens under the policy being trained.
      old_logp: f32[B, T] the same under the policy that sampled them (no gradient flows).
      advantages: f32[B], one per sequence (see `group_advantages`).
      mask: [B, T], 1 for tokens the policy sampled.
      eps_low, eps_high: clip range [1 - eps_low, 1 + eps_high] of the ratio (DAPO clip-higher
        uses eps_high > eps_low).
      beta: KL coefficient. With beta == 0 (a Python number) `ref_logp` is ignored and may be None.
      ref_logp: f32[B, T] log-probs under the frozen reference policy.
      kl_estimator: "k1" | "k2" | "k3", see `kl_penalty`.
      aggregation, constant_norm: see `token_weights`.

    Returns:
      loss_sum f32[], denominator f32[], metrics: dict of f32[] token means over this batch
        clip_frac_low: tokens with A < 0 and r < 1 - eps_low (clipped, zero gradient)
        clip_frac_high: tokens with A > 0 and r > 1 + eps_high (clipped, zero gradient)
        approx_kl: k3 estimate of KL(old || current), the step size of this update
        ratio_mean: mean r; ref_kl: mean KL_t to the reference (only when the KL term is on)
        tokens: number of loss tokens (to weight these means across microbatches).
    """
    use_kl = not (isinstance(beta, (int, float)) and beta == 0)
    if use_kl and ref_logp is None:
        raise ValueError(f"policy_loss: beta={beta} needs ref_logp (the reference policy's log-probs)")
    mask = mask.astype(jnp.float32)
    logp = logp.astype(jnp.float32)
    old_logp = jax.lax.stop_gradient(old_logp.astype(jnp.float32))
    adv = jax.lax.stop_gradient(jnp.asarray(advantages, jnp.float32))[:, None]   # [B, 1]

    log_ratio = logp - old_logp
    ratio = jnp.exp(log_ratio)
    surrogate = jnp.minimum(ratio * adv, jnp.clip(ratio, 1.0 - eps_low, 1.0 + eps_high) * adv)
    per_token = -surrogate
    if use_kl:
        ref_kl = kl_penalty(logp, jax.lax.stop_gradient(ref_logp), kl_estimator)
        per_token = per_token + beta * ref_kl

    weights, denominator = token_weights(mask, aggregation, constant_norm)
    loss_sum = (per_token * weights).sum()

    sg_ratio = jax.lax.stop_gradient(ratio)
    metrics = {
        "clip_frac_low": _masked_mean(((adv < 0) & (sg_ratio < 1.0 - eps_low)).astype(jnp.float32), mask),
        "clip_frac_high": _masked_mean(((adv > 0) & (sg_ratio > 1.0 + eps_high)).astype(jnp.float32), mask),
        "approx_kl": _masked_mean(sg_ratio - 1.0 - jax.lax.stop_gradient(log_ratio), mask),
        "ratio_mean": _masked_mean(sg_ratio, mask),
        "tokens": mask.sum(),
    }
    if use_kl:
        metrics["ref_kl"] = _masked_mean(jax.lax.stop_gradient(ref_kl), mask)
    return loss_sum, denominator, metrics


def token_logprobs(logits: jax.Array, tokens: jax.Array) -> jax.Array:
    """log softmax(logits)[token], computed in f32 via logsumexp.

    Args:
      logits: [B, T, V] (any float dtype); tokens: int[B, T].
    Returns:
      f32[B, T].
    """
    logits = logits.astype(jnp.float32)
    picked = jnp.take_along_axis(logits, tokens[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return picked - jax.nn.logsumexp(logits, axis=-1)


def token_entropy(logits: jax.Array) -> jax.Array:
    """Entropy of softmax(logits) per position: logsumexp(z) - sum(softmax(z) * z), in f32.

    Args:
      logits: [B, T, V].
    Returns:
      f32[B, T], in nats.
    """
    logits = logits.astype(jnp.float32)
    return jax.nn.logsumexp(logits, axis=-1) - (jax.nn.softmax(logits, axis=-1) * logits).sum(-1)


def sft_loss(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Token-level cross-entropy as (sum over masked tokens, number of masked tokens).

    Args:
      logits: [B, T, V] predictions for targets[b, t]; targets: int[B, T]; mask: [B, T], bool or per-token
        float weights (then the weighted sum and the sum of weights).
    Returns:
      (f32[] loss_sum, f32[] denominator).
    """
    mask = mask.astype(jnp.float32)
    return -(token_logprobs(logits, targets) * mask).sum(), mask.sum()


def minibatches(key: jax.Array, n: int, minibatch_size: int, num_epochs: int = 1) -> jax.Array:
    """Shuffled minibatch indices for `num_epochs` passes over `n` examples.

    Each epoch is an independent permutation cut into n // minibatch_size minibatches, so a
    single `lax.scan` over the rows runs mu policy epochs. `n`, `minibatch_size` and
    `num_epochs` are static Python ints.

    Args:
      key: PRNG key.
    Returns:
      int32[num_epochs * (n // minibatch_size), minibatch_size].
    """
    if minibatch_size < 1 or n % minibatch_size:
        raise ValueError(f"minibatches: batch of {n} does not split into minibatches of {minibatch_size}")
    if num_epochs < 1:
        raise ValueError(f"minibatches: num_epochs must be >= 1, got {num_epochs}")
    keys = jax.random.split(key, num_epochs)
    perms = jax.vmap(lambda k: jax.random.permutation(k, n))(keys)          # [E, n]
    return perms.astype(jnp.int32).reshape(num_epochs * (n // minibatch_size), minibatch_size)
