"""One jitted multi-turn rollout: the policy decodes, the sandbox answers, all inside one `lax.while_loop`.

Every step of the loop emits one token per episode. The sandbox says whether it has a token of its own to insert
(a tool response, a check result, the next assistant header); if so that token is forced, otherwise the policy's
sampled token is used. Either way the token goes through the sandbox's byte-level parser and into the model's KV
cache, so nothing is detokenized or retokenized between turns: the tokens the policy sampled are exactly the
tokens it is trained on, and the tokens the sandbox inserted are masked out of the loss by construction.

A policy is a pair of pure functions over an explicit carry (`Policy`), so the same loop runs the model
(`model_policy`) and the sandbox's scripted policies (`scripted_policy`, which need no model at all: SFT
demonstrations are rendered through the very same token path).

Shapes: B episodes, P prompt length (left-padded), T = max_new_tokens steps, S = P + T.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from agent_rl import model as model_lib
from agent_rl import sampling
from sandbox import env as env_lib
from sandbox import scripted as scripted_lib


class Trajectory(NamedTuple):
    """A batch of finished episodes.

    tokens:      int32[B, S]  left-padded prompt, then every token emitted (pad after the episode ended)
    valid:       bool[B, S]   real tokens (prompt tokens and tokens emitted before the episode ended)
    policy_mask: bool[B, S]   tokens the policy sampled: the loss positions
    logprobs:    f32[B, S]    behaviour log-prob of each policy token (0 elsewhere)
    env_state:   the sandbox's final state per episode (outcomes and rewards are read from it)
    """
    tokens: jax.Array
    valid: jax.Array
    policy_mask: jax.Array
    logprobs: jax.Array
    env_state: Any


class Policy(NamedTuple):
    """act(carry, env_state, scenario, key) -> (token int32[B], logprob f32[B]);
    observe(carry, token int32[B], live bool[B]) -> carry, after the step's token (sampled or forced) is known."""
    act: Callable
    observe: Callable


def prompt_valid(scenario) -> jax.Array:
    """bool[B, P]: real prompt tokens (prompts are left-padded)."""
    p = scenario.prompt.shape[-1]
    return jnp.arange(p)[None, :] >= p - scenario.prompt_len[:, None]


def model_policy(model: model_lib.Transformer, temperature: float | jax.Array) -> Policy:
    """Samples from the model; the carry is (KV cache, logits of the next token f32[B, V])."""

    def act(carry, env_state, scenario, key):
        _, logits = carry
        return sampling.sample_token(key, logits, temperature)

    def observe(carry, token, live):
        cache, _ = carry
        logits, cache = model_lib.prefill(model, cache, token[:, None], live[:, None])
        return cache, logits[:, 0]

    return Policy(act, observe)


def scripted_policy(policy_id: jax.Array) -> Policy:
    """Sandbox scripted policies (int32[B] ids into `sandbox.types.POLICIES`) through the same token path; carry ()."""

    def act(carry, env_state, scenario, key):
        token = jax.vmap(scripted_lib.scripted_token)(env_state, scenario, policy_id)
        return token.astype(jnp.int32), jnp.zeros(token.shape, jnp.float32)

    return Policy(act, lambda carry, token, live: carry)


def run(policy: Policy, carry, scenario, vocab, key: jax.Array, env_params, max_new_tokens: int) -> Trajectory:
    """Run B episodes to the end (or the token budget). Pure and jit-able; `max_new_tokens` is static and should
    equal `env_params.max_tokens`, where the sandbox truncates an episode.

    scenario: a batched sandbox Scenario [B, ...]; vocab: the sandbox's byte table of the tokenizer.
    """
    b, p = scenario.prompt.shape
    t_max = max_new_tokens
    k_env, k_loop = jax.random.split(key)
    env_state = jax.vmap(env_lib.reset, in_axes=(0, 0, None))(jax.random.split(k_env, b), scenario, env_params)
    step_env = jax.vmap(env_lib.step, in_axes=(0, 0, None, 0, None))
    forced_token = jax.vmap(env_lib.forced_token)

    tokens = jnp.full((b, t_max), vocab.pad_id, jnp.int32)
    live_buf = jnp.zeros((b, t_max), bool)
    policy_buf = jnp.zeros((b, t_max), bool)
    logp_buf = jnp.zeros((b, t_max), jnp.float32)

    def cond(c):
        t, _, env_state, *_ = c
        return (t < t_max) & ~jnp.all(env_state.done)

    def body(c):
        t, carry, env_state, tokens, live_buf, policy_buf, logp_buf = c
        sampled, logp = policy.act(carry, env_state, scenario, jax.random.fold_in(k_loop, t))
        f_tok, forced = forced_token(env_state, scenario)
        live = ~env_state.done
        token = jnp.where(live, jnp.where(forced, f_tok, sampled), vocab.pad_id).astype(jnp.int32)
        by_policy = live & ~forced
        new_state = step_env(env_state, scenario, vocab, token, env_params)
        # Finished episodes stay exactly as they were (the sandbox never sees their padding).
        env_state = jax.tree.map(lambda n, o: jnp.where(_bcast(live, n), n, o), new_state, env_state)
        carry = policy.observe(carry, token, live)
        tokens = tokens.at[:, t].set(token)
        live_buf = live_buf.at[:, t].set(live)
        policy_buf = policy_buf.at[:, t].set(by_policy)
        logp_buf = logp_buf.at[:, t].set(jnp.where(by_policy, logp, 0.0))
        return t + 1, carry, env_state, tokens, live_buf, policy_buf, logp_buf

    init = (jnp.zeros((), jnp.int32), carry, env_state, tokens, live_buf, policy_buf, logp_buf)
    _, _, env_state, tokens, live_buf, policy_buf, logp_buf = jax.lax.while_loop(cond, body, init)
    pv = prompt_valid(scenario)
    return Trajectory(
        tokens=jnp.concatenate([jnp.where(pv, scenario.prompt, vocab.pad_id), tokens], axis=1),
        valid=jnp.concatenate([pv, live_buf], axis=1),
        policy_mask=jnp.concatenate([jnp.zeros_like(pv), policy_buf], axis=1),
        logprobs=jnp.concatenate([jnp.zeros(pv.shape, jnp.float32), logp_buf], axis=1),
        env_state=env_state,
    )


def _bcast(mask: jax.Array, x: jax.Array) -> jax.Array:
    return mask.reshape(mask.shape + (1,) * (x.ndim - 1))


@partial(jax.jit, static_argnames=("graphdef", "max_new_tokens"))
def sample_episodes(graphdef, params, scenario, vocab, key, env_params, temperature, *, max_new_tokens: int):
    """The model's rollout: prefill the prompts, then `run` with the model policy. Returns a Trajectory."""
    model = nnx.merge(graphdef, params)
    b, p = scenario.prompt.shape
    cache = model_lib.init_cache(model.cfg, b, p + max_new_tokens)
    logits, cache = model_lib.prefill(model, cache, scenario.prompt, prompt_valid(scenario))
    return run(model_policy(model, temperature), (cache, logits[:, -1]), scenario, vocab, key, env_params,
               max_new_tokens)


@partial(jax.jit, static_argnames=("max_new_tokens",))
def scripted_episodes(policy_id, scenario, vocab, key, env_params, *, max_new_tokens: int):
    """A scripted policy's rollout (no model): demonstrations for SFT and reference numbers for evaluation."""
    return run(scripted_policy(policy_id), (), scenario, vocab, key, env_params, max_new_tokens)


def trim(traj: Trajectory, multiple: int = 32) -> Trajectory:
    """Left-align every row and drop the columns that are then padding in every row (host side, before a loss).

    A row is its left-padded prompt followed by its episode, so its valid tokens are one contiguous run; shifting
    each run to column 0 makes the width the longest row's length (rounded up to `multiple`, so few shapes get
    compiled) instead of the longest prompt plus the longest episode. Log-probs are unchanged by this: positions
    count valid tokens only and padding is never attended to.
    """
    valid = np.asarray(traj.valid)
    width = valid.shape[1]
    start = np.argmax(valid, axis=1)  # first valid column (0 for an empty row)
    length = valid.sum(1)
    keep = min(width, max(multiple, -(-int(length.max(initial=0)) // multiple) * multiple))
    src = start[:, None] + np.arange(keep)[None, :]
    inside = src < width
    src = np.minimum(src, width - 1)

    def shift(x, fill):
        x = np.take_along_axis(np.asarray(x), src, axis=1)
        return np.where(inside, x, fill)

    return traj._replace(tokens=shift(traj.tokens, 0), valid=shift(valid, False),
                         policy_mask=shift(traj.policy_mask, False), logprobs=shift(traj.logprobs, 0.0))


def trim_prompts(scenario, multiple: int = 32):
    """Drop prompt columns that are padding in every row of this batch (prompts are left-padded), keeping the width
    a multiple of `multiple`: a shorter KV cache and prefill for batches of short prompts."""
    width = scenario.prompt.shape[1]
    keep = min(width, -(-int(np.max(scenario.prompt_len)) // multiple) * multiple)
    return scenario.replace(prompt=scenario.prompt[:, width - keep:])


def repeat_group(scenario, group_size: int):
    """[N, ...] scenarios -> [N * G, ...]: each scenario G times in a row (one GRPO group per scenario)."""
    return jax.tree.map(lambda x: jnp.repeat(x, group_size, axis=0), scenario)
