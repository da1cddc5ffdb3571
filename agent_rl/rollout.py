"""One jitted multi-turn rollout: the policy decodes, the sandbox answers, all inside one jitted loop.

Every step of the loop emits one token per live episode (`lax.while_loop`; once half the rows are done the loop
goes on with the live ones only, see `run`). The sandbox says whether it has a token of its own to insert
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
    """act(carry, env_state, scenario, keys) -> (token int32[B], logprob f32[B]); keys: one PRNG key per row;
    observe(carry, token int32[B], live bool[B]) -> carry, after the step's token (sampled or forced) is known;
    take(carry, rows int32[n]) -> the carry of those rows only (`run` drops finished rows as it goes)."""
    act: Callable
    observe: Callable
    take: Callable


def prompt_valid(scenario) -> jax.Array:
    """bool[B, P]: real prompt tokens (prompts are left-padded)."""
    p = scenario.prompt.shape[-1]
    return jnp.arange(p)[None, :] >= p - scenario.prompt_len[:, None]


def model_policy(model: model_lib.Transformer, temperature: float | jax.Array) -> Policy:
    """Samples from the model; the carry is (KV cache, logits of the next token f32[B, V])."""

    def act(carry, env_state, scenario, keys):
        _, logits = carry
        return sampling.sample_token(keys, logits, temperature)

    def observe(carry, token, live):
        cache, _ = carry
        logits, cache = model_lib.prefill(model, cache, token[:, None], live[:, None])
        return cache, logits[:, 0]

    def take(carry, rows):
        cache, logits = carry
        return model_lib.take_rows(cache, rows), logits[rows]

    return Policy(act, observe, take)


def scripted_policy() -> Policy:
    """Sandbox scripted policies through the same token path; the carry is their ids int32[B] (rows of
    `sandbox.types.POLICIES`)."""

    def act(carry, env_state, scenario, keys):
        token = jax.vmap(scripted_lib.scripted_token)(env_state, scenario, carry)
        return token.astype(jnp.int32), jnp.zeros(token.shape, jnp.float32)

    return Policy(act, lambda carry, token, live: carry, lambda carry, rows: carry[rows])


def batch_sizes(b: int, halvings: int) -> list[int]:
    """The batch sizes `run` steps at: b, then halved up to `halvings` times while the halves still split evenly
    over the mesh's row shards (`model.row_shards`)."""
    shards, sizes = model_lib.row_shards(), [b]
    for _ in range(halvings):
        half = sizes[-1] // 2
        if sizes[-1] % 2 or half < shards or half % shards:
            break
        sizes.append(half)
    return sizes


def run(policy: Policy, carry, scenario, vocab, key: jax.Array, env_params, max_new_tokens: int,
        halvings: int = 0) -> Trajectory:
    """Run B episodes to the end (or the token budget). Pure and jit-able; `max_new_tokens` is static and should
    equal `env_params.max_tokens`, where the sandbox truncates an episode.

    scenario: a batched sandbox Scenario [B, ...]; vocab: the sandbox's byte table of the tokenizer.
    halvings (static): once no more than half of the rows being stepped are live, the loop drops the finished rows
    and goes on with half as many (at most `halvings` times, `batch_sizes`): lockstep decoding otherwise pays for
    every finished row until the longest episode ends. Each size compiles its own copy of the loop body. Every row
    samples with its own key (the step's key folded with the row's index), so an episode's tokens do not depend on
    which rows share its batch or on `halvings` (up to floating-point differences between batch sizes).
    """
    b, p = scenario.prompt.shape
    t_max = max_new_tokens
    k_env, k_loop = jax.random.split(key)
    env_state = jax.vmap(env_lib.reset, in_axes=(0, 0, None))(jax.random.split(k_env, b), scenario, env_params)
    forced_token = jax.vmap(env_lib.forced_token)
    row_key = jax.vmap(jax.random.fold_in, in_axes=(None, 0))
    # step_batch gathers the rows that need the byte loop or end a turn; with the rows sharded over devices that
    # gather crosses shards inside the loop (two processes on one machine aborted in it), so there the env steps
    # every row (jax.vmap(step), equal results).
    vmapped = jax.vmap(env_lib.step, in_axes=(0, 0, None, 0, None))
    step_env = env_lib.step_batch if model_lib.row_shards() == 1 else vmapped

    # Outputs [B, T] of every row; the loop writes the rows it steps (`rows`: their indices in the batch).
    out = (jnp.full((b, t_max), vocab.pad_id, jnp.int32), jnp.zeros((b, t_max), bool), jnp.zeros((b, t_max), bool),
           jnp.zeros((b, t_max), jnp.float32))

    def body(c):
        t, carry, env_state, scen, rows, (tokens, live_buf, policy_buf, logp_buf) = c
        sampled, logp = policy.act(carry, env_state, scen, row_key(jax.random.fold_in(k_loop, t), rows))
        f_tok, forced = forced_token(env_state, scen)
        live = ~env_state.done
        token = jnp.where(live, jnp.where(forced, f_tok, sampled), vocab.pad_id).astype(jnp.int32)
        by_policy = live & ~forced
        new_state = step_env(env_state, scen, vocab, token, env_params)
        # Finished episodes stay exactly as they were (the sandbox never sees their padding).
        env_state = jax.tree.map(lambda n, o: jnp.where(_bcast(live, n), n, o), new_state, env_state)
        carry = policy.observe(carry, token, live)
        out = (tokens.at[rows, t].set(token), live_buf.at[rows, t].set(live), policy_buf.at[rows, t].set(by_policy),
               logp_buf.at[rows, t].set(jnp.where(by_policy, logp, 0.0)))
        return t + 1, carry, env_state, scen, rows, out

    final = env_state  # every row's state, written back before a row is dropped
    c = (jnp.zeros((), jnp.int32), carry, env_state, scenario, jnp.arange(b), out)
    sizes = batch_sizes(b, halvings)
    for i, n in enumerate(sizes):
        keep = sizes[i + 1] if i + 1 < len(sizes) else 0  # step while more rows than the next size are live
        c = jax.lax.while_loop(lambda c: (c[0] < t_max) & (jnp.sum(~c[2].done) > keep), body, c)
        t, carry, env_state, scen, rows, out = c
        final = jax.tree.map(lambda f, e: f.at[rows].set(e), final, env_state)
        if keep:
            pick = jnp.argsort(env_state.done, stable=True)[:keep]  # the live rows first
            c = (t, policy.take(carry, pick), jax.tree.map(lambda x: x[pick], env_state),
                 jax.tree.map(lambda x: x[pick], scen), rows[pick], out)
    tokens, live_buf, policy_buf, logp_buf = out
    pv = prompt_valid(scenario)
    return Trajectory(
        tokens=jnp.concatenate([jnp.where(pv, scenario.prompt, vocab.pad_id), tokens], axis=1),
        valid=jnp.concatenate([pv, live_buf], axis=1),
        policy_mask=jnp.concatenate([jnp.zeros_like(pv), policy_buf], axis=1),
        logprobs=jnp.concatenate([jnp.zeros(pv.shape, jnp.float32), logp_buf], axis=1),
        env_state=final,
    )


def _bcast(mask: jax.Array, x: jax.Array) -> jax.Array:
    return mask.reshape(mask.shape + (1,) * (x.ndim - 1))


@partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "halvings", "group_size"))
def sample_episodes(graphdef, params, scenario, vocab, key, env_params, temperature, *, max_new_tokens: int,
                    halvings: int = 2, group_size: int = 1):
    """The model's rollout: prefill the prompts, then `run` with the model policy. Returns a Trajectory.

    group_size > 1: the rows come in groups of that many copies of one scenario (`repeat_group`); each group's
    prompt is prefilled once and its KV cache copied to the group's rows (when the groups split evenly over the
    mesh's row shards; otherwise every row is prefilled)."""
    model = nnx.merge(graphdef, params)
    b, p = scenario.prompt.shape
    share = group_size > 1 and b % group_size == 0 and (b // group_size) % model_lib.row_shards() == 0
    prompt, valid = scenario.prompt, prompt_valid(scenario)
    if share:  # each group's first row
        prompt, valid = prompt[::group_size], valid[::group_size]
    cache = model_lib.init_cache(model.cfg, prompt.shape[0], p + max_new_tokens)
    logits, cache = model_lib.prefill(model, cache, prompt, valid)
    logits = logits[:, -1]
    if share:
        rows = jnp.repeat(jnp.arange(b // group_size), group_size)
        cache, logits = model_lib.take_rows(cache, rows), logits[rows]
    return run(model_policy(model, temperature), (cache, logits), scenario, vocab, key, env_params,
               max_new_tokens, halvings)


@partial(jax.jit, static_argnames=("max_new_tokens", "halvings"))
def scripted_episodes(policy_id, scenario, vocab, key, env_params, *, max_new_tokens: int, halvings: int = 0):
    """A scripted policy's rollout (no model): demonstrations for SFT and reference numbers for evaluation."""
    return run(scripted_policy(), policy_id, scenario, vocab, key, env_params, max_new_tokens, halvings)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _shifter(start: np.ndarray, keep: int, width: int):
    """(x [B, width], fill) -> [B, keep]: row b's columns start[b], start[b] + 1, ..., `fill` past the last one
    (host side; the column indices are computed once for every field shifted)."""
    src = start[:, None] + np.arange(keep)[None, :]
    inside = src < width
    src = np.minimum(src, width - 1)
    return lambda x, fill: np.where(inside, np.take_along_axis(np.asarray(x), src, axis=1), fill)


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
    keep = min(width, max(multiple, _round_up(int(valid.sum(1).max(initial=0)), multiple)))
    shift = _shifter(start, keep, width)
    return traj._replace(tokens=shift(traj.tokens, 0), valid=shift(valid, False),
                         policy_mask=shift(traj.policy_mask, False), logprobs=shift(traj.logprobs, 0.0))


class Shared(NamedTuple):
    """A GRPO batch laid out for `model.forward_shared`: each group's prompt once, each row's tokens after it.

    prefix:       int32[N, P]  group g's prompt but its last token (left-aligned, padded on the right)
    prefix_valid: bool[N, P]
    tokens, valid, policy_mask, logprobs: [N * G, T]  row r (group r // G) from its prompt's last token on, so the
                  first position's logits predict the episode's first token; the Trajectory's fields otherwise.
    """
    prefix: jax.Array
    prefix_valid: jax.Array
    tokens: jax.Array
    valid: jax.Array
    policy_mask: jax.Array
    logprobs: jax.Array


def share_prompts(traj: Trajectory, prompt_len, group_size: int, multiple: int = 32,
                  prompt_multiple: int = 32) -> Shared:
    """`trim`'s batch split at each row's prompt (host side): the G rows of a group (consecutive, as
    `repeat_group` lays them out) share one prompt, which the update then runs once instead of G times.

    traj: left-aligned rows (`trim`'s output); prompt_len int[N * G]. The rows' width is a multiple of `multiple`,
    the prompts' of `prompt_multiple` (each new pair of widths compiles the update again). The rows of a group
    must hold the same prompt: a ValueError names the first group whose rows differ.
    """
    tokens, valid = np.asarray(traj.tokens), np.asarray(traj.valid)
    b, width = tokens.shape
    if b % group_size:
        raise ValueError(f"share_prompts: {b} rows do not split into groups of {group_size}")
    cut = np.asarray(prompt_len, np.int64) - 1  # prompt tokens before the shared part ends
    first = np.arange(0, b, group_size)
    cols = np.arange(width)[None, :]
    prompt = np.where(cols < cut[:, None] + 1, tokens, -1)
    same = (prompt.reshape(-1, group_size, width) == prompt[first][:, None]).all(axis=(1, 2))
    if not same.all():
        raise ValueError(f"share_prompts: the rows of GRPO group {int(np.argmin(same))} hold different prompts")
    p = max(prompt_multiple, _round_up(int(cut.max(initial=0)), prompt_multiple))
    pv = np.arange(p)[None, :] < cut[first][:, None]
    prefix = np.where(pv, np.pad(tokens[first], ((0, 0), (0, max(p - width, 0))))[:, :p], 0)
    t = min(width, max(multiple, _round_up(int((valid.sum(1) - cut).max(initial=0)), multiple)))
    shift = _shifter(cut, t, width)
    return Shared(prefix.astype(np.int32), pv, shift(tokens, 0), shift(valid, False),
                  shift(traj.policy_mask, False), shift(traj.logprobs, 0.0))


def trim_prompts(scenario, multiple: int = 32):
    """Drop prompt columns that are padding in every row of this batch (prompts are left-padded), keeping the width
    a multiple of `multiple`: a shorter KV cache and prefill for batches of short prompts."""
    width = scenario.prompt.shape[1]
    keep = min(width, _round_up(int(np.max(scenario.prompt_len)), multiple))
    return scenario.replace(prompt=scenario.prompt[:, width - keep:])


def repeat_group(scenario, group_size: int):
    """[N, ...] scenarios -> [N * G, ...]: each scenario G times in a row (one GRPO group per scenario)."""
    return jax.tree.map(lambda x: jnp.repeat(x, group_size, axis=0), scenario)
