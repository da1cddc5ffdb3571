"""Token sampling and KV-cached generation (one jitted lax loop)."""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from agent_rl import model as model_lib


def top_p_filter(logits: jax.Array, top_p: float) -> jax.Array:
  """float[B, V] -> logits with everything outside the nucleus set to -inf.

  The nucleus is the smallest set of most likely tokens whose probability reaches top_p (the most likely token
  is always kept). Tokens tied with the smallest kept logit are kept too.
  """
  sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
  probs = jax.nn.softmax(sorted_logits, axis=-1)
  mass_before = jnp.cumsum(probs, axis=-1) - probs
  kept = mass_before < top_p
  threshold = jnp.min(jnp.where(kept, sorted_logits, jnp.inf), axis=-1, keepdims=True)
  return jnp.where(logits >= threshold, logits, -jnp.inf)


def _per_row(key: jax.Array) -> bool:
  """True for a batch of keys (typed keys [B], or raw uint32 keys [B, 2]), False for one key."""
  typed = jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
  return key.ndim > (0 if typed else 1)


def categorical(key: jax.Array, logits: jax.Array) -> jax.Array:
  """int32[B]: one draw per row from softmax(logits [B, V]) by inverting the CDF with one uniform per row.

  key: one key, or one key per row (keys [B]).

  The same distribution as `jax.random.categorical`, which draws B x V Gumbel variates: on a CPU that was most
  of the cost of a decoding step of a small model. Tokens with probability 0 (logit -inf) are never drawn.
  """
  cdf = jnp.cumsum(jax.nn.softmax(logits.astype(jnp.float32), axis=-1), axis=-1)
  if _per_row(key):  # one key per row: a row's draw does not depend on which rows share its batch
    u = jax.vmap(lambda k: jax.random.uniform(k, (1,), jnp.float32))(key)
  else:
    u = jax.random.uniform(key, (logits.shape[0], 1), jnp.float32)
  u = u * cdf[:, -1:]
  # The first index whose cumulative mass exceeds u; a zero-probability token never adds mass, so never wins.
  token = jnp.sum(cdf <= u, axis=-1)
  return jnp.minimum(token, logits.shape[-1] - 1).astype(jnp.int32)


def sample_token(key: jax.Array, logits: jax.Array, temperature: float | jax.Array,
                 top_p: float = 1.0) -> tuple[jax.Array, jax.Array]:
  """Pick one token per row. logits float[B, V] -> (token int32[B], logprob float32[B]).

  key: one key, or one per row (`categorical`). temperature 0 is greedy (argmax); temperature may be a traced
  scalar. top_p (a Python float) restricts sampling to the nucleus. The returned logprob is
  log_softmax(logits)[token]: the token's log-probability under the model's own distribution (temperature 1, no
  nucleus), which is what a policy-gradient loss recomputes from `forward`; it is not the log-probability under the
  tempered/truncated sampling distribution.
  """
  logits = logits.astype(jnp.float32)
  logprobs = jax.nn.log_softmax(logits, axis=-1)
  greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)
  if isinstance(temperature, (int, float)) and temperature == 0:
    token = greedy
  else:
    temp = jnp.asarray(temperature, jnp.float32)
    scaled = logits / jnp.maximum(temp, 1e-6)
    if top_p < 1.0:
      scaled = top_p_filter(scaled, top_p)
    sampled = categorical(key, scaled)
    token = jnp.where(temp > 0, sampled, greedy)
  return token, jnp.take_along_axis(logprobs, token[:, None], axis=-1)[:, 0]


def generate(model: model_lib.Transformer, tokens: jax.Array, valid: jax.Array, key: jax.Array,
             max_new_tokens: int, eos_id: int | Sequence[int], temperature: float | jax.Array = 0.0,
             top_p: float = 1.0) -> tuple[jax.Array, jax.Array]:
  """Continue LEFT-padded prompts tokens int32[B, P], valid bool[B, P] by up to max_new_tokens tokens.

  Returns new_tokens int32[B, N] and new_valid bool[B, N] with N = max_new_tokens. A row stops after it emits
  an EOS token (eos_id: one id or several); the EOS itself is valid, later entries are filled with the first
  EOS id and marked invalid. The loop exits early once every row has stopped. Pass eos_id=-1 to never stop.
  Compiled once per (model graph, shapes, max_new_tokens, eos_id, top_p).
  """
  eos = (eos_id,) if isinstance(eos_id, int) else tuple(int(e) for e in eos_id)
  graphdef, state = nnx.split(model)
  greedy = isinstance(temperature, (int, float)) and temperature == 0  # static: skip the sampling path
  return _generate(graphdef, state, tokens, valid, key, 1.0 if greedy else temperature,
                   max_new_tokens=int(max_new_tokens), eos=eos, top_p=float(top_p), greedy=greedy)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "eos", "top_p", "greedy"))
def _generate(graphdef, state, tokens, valid, key, temperature, *, max_new_tokens, eos, top_p, greedy):
  model = nnx.merge(graphdef, state)
  temperature = 0 if greedy else temperature
  b, p = tokens.shape
  n = max_new_tokens
  eos_arr = jnp.asarray(eos, jnp.int32)
  cache = model_lib.init_cache(model.cfg, b, p + n)
  logits, cache = model_lib.prefill(model, cache, tokens.astype(jnp.int32), valid.astype(bool))
  key, sub = jax.random.split(key)
  token, _ = sample_token(sub, logits[:, -1], temperature, top_p)
  done = jnp.isin(token, eos_arr)
  out_tokens = jnp.full((b, n), eos[0], jnp.int32).at[:, 0].set(token)
  out_valid = jnp.zeros((b, n), bool).at[:, 0].set(True)

  def cond(carry):
    i, done = carry[0], carry[3]
    return (i < n) & ~jnp.all(done)

  def body(carry):
    i, cache, token, done, key, out_tokens, out_valid = carry
    logits, cache = model_lib.decode_step(model, cache, token)
    key, sub = jax.random.split(key)
    token, _ = sample_token(sub, logits, temperature, top_p)
    token = jnp.where(done, eos[0], token)
    out_tokens = jax.lax.dynamic_update_slice(out_tokens, token[:, None], (0, i))
    out_valid = jax.lax.dynamic_update_slice(out_valid, ~done[:, None], (0, i))
    done = done | jnp.isin(token, eos_arr)
    return i + 1, cache, token, done, key, out_tokens, out_valid

  carry = (jnp.int32(1), cache, token, done, key, out_tokens, out_valid)
  carry = jax.lax.while_loop(cond, body, carry)
  return carry[5], carry[6]
