"""The jitted steps of training and what they are made of: the optimizer, per-token log-probs, microbatched
gradients, the SFT step, the GRPO update and the reward of finished episodes.

Every loss here returns (sum, denominator) per microbatch, so gradient accumulation gives exactly the whole batch's
loss and gradient. With LoRA, `params` are the adapters and `frozen` the base weights, which nothing differentiates.
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from agent_rl import grpo
from agent_rl import model as model_lib
from agent_rl import rollout
from sandbox import env as env_lib
from sandbox import rewards as rewards_lib


class NonFiniteLoss(RuntimeError):
    pass


def lr_schedule(lr: float, warmup: int, steps: int, updates_per_step: int = 1):
    """Linear warm-up over `warmup` training steps, then cosine decay to lr / 10 at `steps`. optax counts optimizer
    updates, and a GRPO step takes several (`grpo_updates_per_step`), so both lengths are scaled by it."""
    n = updates_per_step
    return optax.warmup_cosine_decay_schedule(0.0, lr, max(warmup, 1) * n, max(steps, warmup + 1) * n, lr * 0.1)


def make_optimizer(schedule, weight_decay: float, max_grad_norm: float = 1.0, mask=None):
    """AdamW after global-norm clipping; `schedule` is a learning rate or an optax schedule (`lr_schedule`).
    mask: None, or multipliers like the parameters (`lora.update_mask`) applied to the final updates, so that
    frozen parameters stay exactly as they are (weight decay would move them)."""
    tx = optax.chain(optax.clip_by_global_norm(max_grad_norm), optax.adamw(schedule, weight_decay=weight_decay))
    if mask is None:
        return tx
    scale = optax.GradientTransformation(
        lambda params: optax.EmptyState(),
        lambda updates, state, params=None: (jax.tree.map(lambda u, m: u * m, updates, mask), state))
    return optax.chain(tx, scale)


def grpo_updates_per_step(g) -> int:
    """Optimizer updates in one GRPO step (g: the `grpo` config): mu epochs of episodes / minibatch_size each."""
    return g.mu * (g.n_scenarios * g.group_size // g.minibatch_size)


def next_tokens(x):
    """x [B, S] -> [B, S]: x[:, s + 1] at s, zero (False) in the last column.

    Losses pair logits[:, s] with next_tokens(tokens)[:, s] and mask out the last column, instead of slicing the
    logits to [:, :-1]: that slice copies the whole [B, S, vocab] tensor, and its gradient pads it back.
    """
    return jnp.pad(x[:, 1:], ((0, 0), (0, 1)))


def sequence_logprobs(model, tokens, valid, temperature: float = 1.0, prefix=None, prefix_valid=None):
    """f32[B, S]: log-prob of tokens[:, s] given tokens[:, :s] (0 at s = 0), and the entropy there.
    With prefix int32[N, P] (and prefix_valid), row r also sees prompt r // (B / N) before it: a `rollout.Shared`
    batch (`model.forward_shared`)."""
    if prefix is None:
        logits = model_lib.forward(model, tokens, valid) / temperature
    else:
        logits = model_lib.forward_shared(model, prefix, prefix_valid, tokens, valid) / temperature
    lp = grpo.token_logprobs(logits, next_tokens(tokens))  # at s: the prediction of tokens[:, s + 1]
    ent = grpo.token_entropy(logits)
    later = lambda x: jnp.pad(x[:, :-1], ((0, 0), (1, 0)))  # noqa: E731  move each prediction to its token
    return later(lp), later(ent)


def accumulated_grad(loss_fn, params, batch, microbatch: int):
    """Gradient of sum(loss sums) / sum(denominators) over microbatches of `microbatch` rows, one at a time.

    loss_fn(params, micro) -> (loss_sum, (denominator, metrics)); batch: pytree of [B, ...] arrays, its first leaf
    the rows (other leaves, e.g. a Shared batch's prompts, are cut into as many equal parts). Because each
    microbatch returns a sum and a count, the result equals the whole batch's loss and gradient at a fraction of
    the activation memory (and on CPU, of the time: small attention blocks stay in cache).
    Returns (loss, grads, metrics averaged over microbatches).
    """
    b = jax.tree.leaves(batch)[0].shape[0]
    n = max(b // microbatch, 1)
    if any(x.shape[0] % n for x in jax.tree.leaves(batch)):
        raise ValueError(f"batch of {b} rows does not split into microbatches of {microbatch}")
    micro = jax.tree.map(lambda x: x.reshape(n, x.shape[0] // n, *x.shape[1:]), batch)

    def body(carry, mb):
        g_acc, s_acc, d_acc = carry
        (s, (d, m)), g = jax.value_and_grad(loss_fn, has_aux=True)(params, mb)
        return (jax.tree.map(jnp.add, g_acc, g), s_acc + s, d_acc + d), m

    zeros = jax.tree.map(jnp.zeros_like, params)
    (g, s, d), ms = jax.lax.scan(body, (zeros, jnp.zeros(()), jnp.zeros(())), micro)
    d = jnp.maximum(d, 1e-9)
    return s / d, jax.tree.map(lambda x: x / d, g), jax.tree.map(jnp.mean, ms)


@functools.partial(jax.jit, static_argnames=("graphdef", "tx", "microbatch"), donate_argnums=(1, 2))
def sft_step(graphdef, params, opt_state, tokens, segments, mask, frozen=None, key=None, *, tx, microbatch: int):
    """One cross-entropy step on demonstration tokens [B, S], the loss on `mask` (the scripted policy's tokens).
    segments int32[B, S]: packed rows (`packing.pack`; 0 on padding, k on a row's k-th demonstration), or a bool
    valid [B, S] for one demonstration per row. params: the trainable state; frozen: the rest (LoRA's base weights),
    never differentiated. key: LoRA dropout."""
    frozen = nnx.State({}) if frozen is None else frozen
    keys = None if key is None else jax.random.split(key, tokens.shape[0])  # one per row: a microbatch uses its first
    segments = segments.astype(jnp.int32)

    def loss_fn(params, mb):
        tokens, segments, mask, keys = mb
        model = nnx.merge(graphdef, params, frozen)
        logits = model_lib.forward_packed(model, tokens, segments, None if keys is None else keys[0])
        loss_sum, denom = grpo.sft_loss(logits, next_tokens(tokens), next_tokens(mask))
        return loss_sum, (denom, {})

    loss, grads, _ = accumulated_grad(loss_fn, params, (tokens, segments, mask, keys), microbatch)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state,
            {"sft/loss": loss, "sft/grad_norm": optax.tree.norm(grads)})


class GrpoHP(NamedTuple):
    """The GRPO update's hyper-parameters (config.grpo's), hashable: a static argument of `grpo_update`."""
    minibatch_size: int
    microbatch: int
    mu: int
    eps_low: float
    eps_high: float
    beta: float
    kl_estimator: str
    aggregation: str
    constant_norm: float
    temperature: float

    @classmethod
    def from_config(cls, g) -> "GrpoHP":
        return cls(g.minibatch_size, g.microbatch, g.mu, g.eps_low, g.eps_high, g.beta, g.kl_estimator,
                   g.aggregation, float(g.constant_norm), g.temperature)


@functools.partial(jax.jit, static_argnames=("graphdef", "tx", "hp"), donate_argnums=(1, 2))
def grpo_update(graphdef, params, opt_state, ref_params, traj: rollout.Trajectory, advantages, key, frozen=None, *,
                tx, hp):
    """mu epochs of minibatch updates on one rollout batch. hp: hashable GRPO hyper-parameters (GrpoHP).
    params, ref_params: trainable states (the policy's and the frozen reference's); frozen: the weights both share
    and nothing updates (LoRA's base).
    traj: a Trajectory, or a `rollout.Shared` batch (each group's prompt run once per microbatch that reads it);
    a Shared batch's minibatches are whole groups (minibatch_size a multiple of the group size, and microbatch a
    multiple or a divisor of it)."""
    frozen = nnx.State({}) if frozen is None else frozen
    n = traj.tokens.shape[0]
    data = (traj.tokens, traj.valid, traj.policy_mask, traj.logprobs, advantages)
    if isinstance(traj, rollout.Shared):
        g = n // traj.prefix.shape[0]
        r = min(hp.microbatch, g)  # rows per prompt in a microbatch
        groups = grpo.minibatches(key, n // g, hp.minibatch_size // g, hp.mu)
        batches = (groups[..., None] * g + jnp.arange(g)).reshape(groups.shape[0], -1)  # a group's rows together
        prompts = lambda rows: (traj.prefix[rows[::r] // g], traj.prefix_valid[rows[::r] // g])  # noqa: E731
    else:
        batches = grpo.minibatches(key, n, hp.minibatch_size, hp.mu)
        prompts = lambda rows: ()  # noqa: E731
    if hp.beta > 0:  # the frozen reference policy's log-probs, once per rollout batch
        ref_model = nnx.merge(graphdef, ref_params, frozen)
        chunks = jax.tree.map(lambda x: x.reshape(n // hp.microbatch, -1, *x.shape[1:]),
                              (traj.tokens, traj.valid) + prompts(jnp.arange(n)))
        ref_logp = jax.lax.map(lambda c: sequence_logprobs(ref_model, *c[:2], hp.temperature, *c[2:])[0], chunks)
        data += (ref_logp.reshape(traj.tokens.shape),)

    def loss_fn(params, mb):
        (tokens, valid, mask, old_logp, adv), ref_logp, prompt = mb[0][:5], mb[0][5:], mb[1]
        logp, ent = sequence_logprobs(nnx.merge(graphdef, params, frozen), tokens, valid, hp.temperature, *prompt)
        loss_sum, denom, m = grpo.policy_loss(
            logp, old_logp, adv, mask, eps_low=hp.eps_low, eps_high=hp.eps_high, beta=hp.beta,
            ref_logp=ref_logp[0] if hp.beta > 0 else None, kl_estimator=hp.kl_estimator,
            aggregation=hp.aggregation, constant_norm=hp.constant_norm or None)
        m["entropy"] = (ent * mask).sum() / jnp.maximum(mask.sum(), 1.0)
        return loss_sum, (denom, m)

    def body(carry, idx):
        params, opt_state = carry
        mb = (jax.tree.map(lambda x: x[idx], data), prompts(idx))
        loss, grads, m = accumulated_grad(loss_fn, params, mb, hp.microbatch)
        updates, opt_state = tx.update(grads, opt_state, params)
        m = {**m, "loss": loss, "grad_norm": optax.tree.norm(grads)}
        return (optax.apply_updates(params, updates), opt_state), m

    (params, opt_state), ms = jax.lax.scan(body, (params, opt_state), batches)
    return params, opt_state, jax.tree.map(jnp.mean, ms)


REWARD_KINDS = ("paper", "shaped")


@functools.partial(jax.jit, static_argnames=("kind", "refusal_check"))
def _score(env_state, scenario, weights: rewards_lib.RewardWeights, *, kind: str, refusal_check: bool = True):
    outcome = jax.vmap(env_lib.outcome)(env_state, scenario)
    if kind == "paper":
        reward = rewards_lib.paper_reward(outcome, scenario, refusal_check)
        return outcome, reward, {"paper": reward}
    reward, comps = rewards_lib.shaped_reward(outcome, scenario, weights)
    return outcome, reward, comps


def score(reward_cfg, env_state, scenario):
    """(Outcome, reward f32[B], components) of finished episodes, with the reward the config names."""
    if reward_cfg.kind not in REWARD_KINDS:
        raise ValueError(f"config.reward.kind={reward_cfg.kind!r}: expected one of {REWARD_KINDS}")
    weights = rewards_lib.RewardWeights(**dict(reward_cfg.weights))
    return _score(env_state, scenario, weights, kind=reward_cfg.kind,
                  refusal_check=bool(reward_cfg.refusal_check))


def finite(m: dict, step: int) -> dict:
    """Pull metrics to the host; a non-finite loss stops the run naming the step (the last checkpoint stays)."""
    m = {k: float(v) for k, v in m.items()}
    bad = [k for k in m if k.endswith("loss") and not math.isfinite(m[k])]
    if bad:
        raise NonFiniteLoss(f"non-finite {bad[0]} = {m[bad[0]]} at step {step}; last good checkpoint kept")
    return m


def measured(m: dict) -> dict:
    """Drop metrics with nothing to measure this step (NaN: e.g. no malicious tool response in the batch)."""
    return {k: v for k, v in m.items() if v is not None and math.isfinite(v)}
