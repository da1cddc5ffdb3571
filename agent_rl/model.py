"""Decoder-only transformer (Qwen2 / Llama family) in Flax NNX, with a KV cache for decoding.

The math follows Hugging Face's Qwen2 and Llama exactly: RMSNorm (statistics in float32), rotary position
embeddings in the `rotate_half` layout, grouped-query attention with optional q/k/v biases, a SwiGLU MLP, and
optionally tied input/output embeddings. Weights load from and export to Hugging Face checkpoints (`agent_rl.hf`).

Layers are stacked: every per-layer parameter has a leading `[layers]` axis and the forward pass is one
`lax.scan` over layers, so compile time does not grow with depth. Every parameter carries logical axis names in
its `out_sharding` metadata (e.g. `("layers", "embed", "mlp")`); `agent_rl.sharding` maps them onto a mesh.

Padding convention
------------------
Prompts are LEFT-padded to a common length `P` and described by `valid bool[B, P]`. Position ids count valid
tokens only (`cumsum(valid) - 1`), so a row's first real token has position 0 whatever its padding. Decoding
is lockstep: every call writes the same cache slot `index` for all rows, while each row keeps its own next
position id `pos[b]`. Padding slots stay `valid=False` in the cache and are never attended to. Nothing in the
math requires the padding to be on the left; any `valid` pattern gives the same result for the valid tokens.

Calling the model inside jit / lax loops
----------------------------------------
The cache is a pytree (`Cache`), so it can be the carry of `lax.scan` / `lax.while_loop`. Parameters travel as
NNX state and are merged back into a module inside the traced function::

    graphdef, params = nnx.split(model)

    @jax.jit
    def greedy(params, cache, tokens, valid):
      model = nnx.merge(graphdef, params)
      logits, cache = prefill(model, cache, tokens, valid)
      def body(carry, _):
        cache, token = carry
        logits, cache = decode_step(model, cache, token)
        token = jnp.argmax(logits, -1).astype(jnp.int32)
        return (cache, token), token
      first = jnp.argmax(logits[:, -1], -1).astype(jnp.int32)
      _, out = jax.lax.scan(body, (cache, first), None, length=16)
      return out.T                                                    # [batch, 16]

`nnx.jit` accepts the module directly as well; the split/merge form is what makes the parameters an explicit
argument (for `jax.grad`, sharding annotations or donation).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

_DTYPES = ("float32", "bfloat16", "float16")
LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Shapes and numerics of the transformer. Hashable, so it can live on the module as static data.

  `dtype` is the compute dtype, `param_dtype` the storage dtype of parameters (both given by name).
  `rope_scaling` is None or the Llama-3 frequency scaling
  `(factor, low_freq_factor, high_freq_factor, original_max_position_embeddings)`.
  `remat` recomputes each layer's activations in the backward pass (saves memory when training).
  `lora_rank` > 0 adds low-rank adapters (`nnx.LoRAParam`, see agent_rl.lora) to the projections named in
  `lora_targets` (any of q, k, v, o, gate, up, down): W x + (lora_alpha / lora_rank) B A dropout(x), with B zero at
  initialisation so a fresh adapter leaves the model unchanged. `lora_dropout` applies only when a forward pass is
  given a dropout key (SFT).
  `decode_block`: cache slots per step of cached attention's loop (`cached_attention`). Each step of the loop has a
  fixed cost; smaller blocks skip more unused slots. On a 2-core CPU 256 decoded 1.10-1.17x faster than 64 for the
  tiny preset and for SmolLM2-135M (docs/experiments.md).
  `train_layers` > 0 lets gradients reach only the top that many blocks and what follows them (final norm, an
  untied lm_head): the embedding (a tied model's output head too) and the blocks below get exactly zero gradient,
  and the backward pass stops at the lowest trained block. Values are unchanged; 0 trains everything.
  """
  vocab_size: int
  d_model: int
  n_layers: int
  n_heads: int
  n_kv_heads: int
  head_dim: int
  mlp_dim: int
  rope_theta: float = 10000.0
  rms_eps: float = 1e-6
  qkv_bias: bool = False
  tie_embeddings: bool = False
  dtype: str = "float32"
  param_dtype: str = "float32"
  rope_scaling: tuple[float, float, float, float] | None = None
  remat: bool = False
  lora_rank: int = 0
  lora_alpha: float = 16.0
  lora_targets: tuple[str, ...] = LORA_TARGETS
  lora_dropout: float = 0.0
  decode_block: int = 256
  train_layers: int = 0

  def __post_init__(self):
    # Normalise dtypes to names (jnp.bfloat16 and "bfloat16" are the same config) and check shapes early.
    for field in ("dtype", "param_dtype"):
      name = jnp.dtype(getattr(self, field)).name
      if name not in _DTYPES:
        raise ValueError(f"ModelConfig.{field}={name!r}: expected one of {_DTYPES}")
      object.__setattr__(self, field, name)
    if self.rope_scaling is not None:
      object.__setattr__(self, "rope_scaling", tuple(float(x) for x in self.rope_scaling))
      if len(self.rope_scaling) != 4:
        raise ValueError(f"ModelConfig.rope_scaling={self.rope_scaling}: expected 4 numbers "
                         "(factor, low_freq_factor, high_freq_factor, original_max_position_embeddings)")
    for field in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "mlp_dim", "decode_block"):
      if int(getattr(self, field)) <= 0:
        raise ValueError(f"ModelConfig.{field}={getattr(self, field)}: must be a positive integer")
    if self.n_heads % self.n_kv_heads:
      raise ValueError(f"ModelConfig.n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
    object.__setattr__(self, "lora_targets", tuple(self.lora_targets))
    unknown = sorted(set(self.lora_targets) - set(LORA_TARGETS))
    if unknown or self.lora_rank < 0 or not 0.0 <= self.lora_dropout < 1.0:
      raise ValueError(f"ModelConfig: lora_targets {unknown} unknown (known: {LORA_TARGETS}), or lora_rank="
                       f"{self.lora_rank} < 0, or lora_dropout={self.lora_dropout} outside [0, 1)")
    if not 0 <= self.train_layers <= self.n_layers:
      raise ValueError(f"ModelConfig.train_layers={self.train_layers}: expected 0 (every layer) to n_layers="
                       f"{self.n_layers}")
    if self.head_dim % 2:
      raise ValueError(f"ModelConfig.head_dim={self.head_dim}: rotary embeddings need an even head_dim")

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> ModelConfig:
    """From a dict or ml_collections ConfigDict; unknown keys are an error naming the key."""
    d = dict(d.to_dict() if hasattr(d, "to_dict") else d)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise ValueError(f"ModelConfig: unknown key(s) {unknown}; known keys are {sorted(names)}")
    return cls(**d)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def replace(self, **kw) -> ModelConfig:
    return dataclasses.replace(self, **kw)

  @property
  def compute_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.dtype)

  @property
  def n_params(self) -> int:
    d, h, k, hd, f = self.d_model, self.n_heads, self.n_kv_heads, self.head_dim, self.mlp_dim
    attn = d * (h + 2 * k) * hd + h * hd * d + (self.qkv_bias * (h + 2 * k) * hd)
    layer = attn + 3 * d * f + 2 * d
    return self.n_layers * layer + d + self.vocab_size * d * (1 if self.tie_embeddings else 2)

  @property
  def n_lora_params(self) -> int:
    """Adapter parameters: rank * (fan_in + fan_out) per targeted projection and layer."""
    d, f, r = self.d_model, self.mlp_dim, self.lora_rank
    q, kv = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
    sizes = dict(q=d + q, k=d + kv, v=d + kv, o=q + d, gate=d + f, up=d + f, down=f + d)
    return self.n_layers * r * sum(sizes[t] for t in self.lora_targets)


def tiny(vocab_size: int = 4096, **kw) -> ModelConfig:
  """A few-million-parameter Qwen2-shaped model for CPU runs and tests."""
  base = dict(vocab_size=vocab_size, d_model=256, n_layers=4, n_heads=4, n_kv_heads=2, head_dim=64, mlp_dim=768,
              rope_theta=10000.0, rms_eps=1e-6, qkv_bias=True, tie_embeddings=True)
  return ModelConfig(**{**base, **kw})


def qwen2_5_0_5b(**kw) -> ModelConfig:
  base = dict(vocab_size=151936, d_model=896, n_layers=24, n_heads=14, n_kv_heads=2, head_dim=64, mlp_dim=4864,
              rope_theta=1000000.0, rms_eps=1e-6, qkv_bias=True, tie_embeddings=True)
  return ModelConfig(**{**base, **kw})


def qwen2_5_1_5b(**kw) -> ModelConfig:
  base = dict(vocab_size=151936, d_model=1536, n_layers=28, n_heads=12, n_kv_heads=2, head_dim=128, mlp_dim=8960,
              rope_theta=1000000.0, rms_eps=1e-6, qkv_bias=True, tie_embeddings=True)
  return ModelConfig(**{**base, **kw})


def qwen2_5_7b(**kw) -> ModelConfig:
  base = dict(vocab_size=152064, d_model=3584, n_layers=28, n_heads=28, n_kv_heads=4, head_dim=128, mlp_dim=18944,
              rope_theta=1000000.0, rms_eps=1e-6, qkv_bias=True, tie_embeddings=False)
  return ModelConfig(**{**base, **kw})


def llama3_2_1b(**kw) -> ModelConfig:
  base = dict(vocab_size=128256, d_model=2048, n_layers=16, n_heads=32, n_kv_heads=8, head_dim=64, mlp_dim=8192,
              rope_theta=500000.0, rms_eps=1e-5, qkv_bias=False, tie_embeddings=True,
              rope_scaling=(32.0, 1.0, 4.0, 8192.0))
  return ModelConfig(**{**base, **kw})


PRESETS = {f.__name__: f for f in (tiny, qwen2_5_0_5b, qwen2_5_1_5b, qwen2_5_7b, llama3_2_1b)}


def preset(name: str, **kw) -> ModelConfig:
  if name not in PRESETS:
    raise ValueError(f"unknown model preset {name!r}; known presets are {sorted(PRESETS)}")
  return PRESETS[name](**kw)


class Cache(NamedTuple):
  """KV cache for lockstep decoding of a batch.

  k, v:  [layers, batch, kv_heads, max_len, head_dim]  keys (already rotated) and values per slot; head-major, so
         a block of slots is a contiguous [batch, kv_heads, block, head_dim] slice ready for a batched matmul
  valid: bool[batch, max_len]  slot holds a real token (False: padding or not yet written)
  pos:   int32[batch]          position id the row's next real token gets
  index: int32[]               next slot to write (shared by all rows)
  """
  k: jax.Array
  v: jax.Array
  valid: jax.Array
  pos: jax.Array
  index: jax.Array


def init_cache(cfg: ModelConfig, batch: int, max_len: int, dtype: Any = None) -> Cache:
  """An empty cache with room for `max_len` slots (prompt padding included). dtype defaults to cfg.dtype.

  Size it for every slot that will be written (prompt + inserted chunks + decoded tokens): inside jit a write
  past the end cannot raise, and XLA clamps it onto the last slots.
  """
  shape = (cfg.n_layers, batch, cfg.n_kv_heads, max_len, cfg.head_dim)
  dtype = cfg.compute_dtype if dtype is None else dtype
  return Cache(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype), valid=jnp.zeros((batch, max_len), bool),
               pos=jnp.zeros((batch,), jnp.int32), index=jnp.zeros((), jnp.int32))


# ---------------------------------------------------------------------------------------------------------------
# Layers


def _param(rngs: nnx.Rngs, shape, names, cfg: ModelConfig, init="normal", kind=nnx.Param) -> nnx.Param:
  """A parameter with logical axis names. Placement on a mesh is done explicitly by agent_rl.sharding."""
  dtype = jnp.dtype(cfg.param_dtype)
  if init == "normal":  # Hugging Face's initializer_range for Qwen2 / Llama
    value = 0.02 * jax.random.normal(rngs.params(), shape, jnp.float32)
  elif init == "fan_in":  # LoRA's A: PEFT's kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    bound = 1.0 / math.sqrt(math.prod(shape[:-1]))
    value = jax.random.uniform(rngs.params(), shape, jnp.float32, -bound, bound)
  elif init == "ones":
    value = jnp.ones(shape, jnp.float32)
  else:
    value = jnp.zeros(shape, jnp.float32)
  return kind(value.astype(dtype), out_sharding=names, eager_sharding=False)


class Projections(nnx.Module):
  """A module of projection weights, each optionally with a LoRA adapter (`<name>_lora_a`, `<name>_lora_b`)."""

  def _weight(self, rngs, cfg: ModelConfig, name: str, shape, names, n_in: int):
    """Create weight `name` [*in, *out] (n_in input axes) and, if targeted, its adapter:
    a [*in, rank] (fan-in uniform) and b [rank, *out] (zeros)."""
    setattr(self, name, _param(rngs, shape, names, cfg))
    if cfg.lora_rank and name in cfg.lora_targets:
      r = cfg.lora_rank
      setattr(self, f"{name}_lora_a", _param(rngs, (*shape[:n_in], r), (*names[:n_in], "lora"), cfg, "fan_in",
                                             nnx.LoRAParam))
      setattr(self, f"{name}_lora_b", _param(rngs, (r, *shape[n_in:]), ("lora", *names[n_in:]), cfg, "zeros",
                                             nnx.LoRAParam))

  def project(self, name: str, x: jax.Array, n_in: int, key: jax.Array | None = None) -> jax.Array:
    """x [..., *in] -> [..., *out] through weight `name` plus its adapter's (alpha / rank) b(a(dropout(x)))."""
    cfg = self.cfg
    w = getattr(self, name)[...].astype(x.dtype)
    y = dense(x, w, n_in)
    if cfg.lora_rank and name in cfg.lora_targets:
      if key is not None and cfg.lora_dropout > 0:
        keep = jax.random.bernoulli(jax.random.fold_in(key, LORA_TARGETS.index(name)), 1 - cfg.lora_dropout,
                                    x.shape)
        x = jnp.where(keep, x / (1 - cfg.lora_dropout), 0).astype(x.dtype)
      a = getattr(self, f"{name}_lora_a")[...].astype(x.dtype)
      b = getattr(self, f"{name}_lora_b")[...].astype(x.dtype)
      y = y + (cfg.lora_alpha / cfg.lora_rank) * dense(dense(x, a, n_in), b, 1)
    return y


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def dense(x: jax.Array, w: jax.Array, n_in: int) -> jax.Array:
  """x [..., *in] . w [*in, *out] -> [..., *out]: `jnp.tensordot(x, w, n_in)` with a hand-written backward pass.

  The weight gradient is one 2-D product x2.T @ dy2 over all rows ([prod in, N] x [N, prod out]) whose operands are
  materialised first (an optimization barrier). Left to itself XLA:CPU folds the transpose its matrix kernel
  needs into the elementwise fusion that produces dy (the SwiGLU's backward, say) and writes it in strided order,
  which cost a quarter of a SmolLM2 training step (experiments/profile_sft_step.py); the barrier keeps that fusion
  row-major. The forward pass and both gradients are the same products as tensordot's, in the same dtypes.
  """
  return jnp.tensordot(x, w, n_in)


def _dense_fwd(x, w, n_in):
  return dense(x, w, n_in), (x, w)


def _dense_bwd(n_in, res, dy):
  x, w = res
  out_axes = tuple(range(n_in, w.ndim))
  dx = jnp.tensordot(dy, w, (tuple(range(dy.ndim - len(out_axes), dy.ndim)), out_axes))
  x2, dy2 = jax.lax.optimization_barrier((x.reshape(-1, math.prod(w.shape[:n_in])),
                                          dy.reshape(-1, math.prod(w.shape[n_in:]))))
  dw = jnp.matmul(x2.T, dy2).reshape(w.shape)
  return dx.astype(x.dtype), dw.astype(w.dtype)


dense.defvjp(_dense_fwd, _dense_bwd)


def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
  """x [..., d] -> [..., d]; statistics in float32, result cast back before the scale (as Hugging Face)."""
  x32 = x.astype(jnp.float32)
  y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
  return scale.astype(x.dtype) * y.astype(x.dtype)


def rope_inv_freq(cfg: ModelConfig) -> np.ndarray:
  """float32[head_dim // 2] rotary frequencies, with Llama-3 scaling when cfg.rope_scaling is set."""
  dim = cfg.head_dim
  inv_freq = (1.0 / (cfg.rope_theta ** (np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / dim)))
  inv_freq = inv_freq.astype(np.float32)
  if cfg.rope_scaling is not None:
    factor, low, high, old_len = cfg.rope_scaling
    low_wavelen, high_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    inv_freq = np.where(medium, smoothed, scaled).astype(np.float32)
  return inv_freq


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: np.ndarray) -> jax.Array:
  """x [B, T, heads, head_dim], positions int[B, T] -> rotated x (Hugging Face rotate_half layout)."""
  freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)  # [B, T, head_dim/2]
  emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]
  cos, sin = jnp.cos(emb).astype(x.dtype), jnp.sin(emb).astype(x.dtype)
  x1, x2 = jnp.split(x, 2, axis=-1)
  return x * cos + jnp.concatenate([-x2, x1], axis=-1) * sin


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
  """Grouped-query attention: q [B, T, heads, hd], k/v [B, S, kv_heads, hd], mask bool[B, T, S] -> [B, T, heads, hd].

  Scores and softmax in float32. Masked scores get the most negative finite float, so a query with no visible
  slot (a padding query) averages uniformly instead of producing NaN.
  The products run head-major, a KV head's g query heads stacked as g * T rows ([B, kv, g*T, hd] x [B, kv, S,
  hd]): batch axes leading and contracted axes last, the layout XLA's matrix kernels take without copying the
  scores; on a CPU this halved a SmolLM2 layer's attention forward pass against a [B, T, kv, g, hd] einsum.
  """
  b, t, h, hd = q.shape
  kvh = k.shape[2]
  g = h // kvh
  qg = jnp.transpose(q.reshape(b, t, kvh, g, hd), (0, 2, 3, 1, 4)).reshape(b, kvh, g * t, hd)
  s = jnp.einsum("bktd,bksd->bkts", qg, jnp.swapaxes(k, 1, 2), preferred_element_type=jnp.float32) / math.sqrt(hd)
  s = jnp.where(mask[:, None, None], s.reshape(b, kvh, g, t, -1), jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(s, axis=-1).astype(v.dtype).reshape(b, kvh, g * t, -1)
  out = jnp.einsum("bkts,bksd->bktd", probs, jnp.swapaxes(v, 1, 2)).reshape(b, kvh, g, t, hd)
  return jnp.transpose(out, (0, 3, 1, 2, 4)).reshape(b, t, h, hd)


def causal_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, block: int,
                     offset: int = 0) -> jax.Array:
  """`attention` for a causal mask (S == offset + T: `offset` slots any query may see, then the T queries' own
  slots, none seen by an earlier query), skipping the key blocks after each block of `block` queries: query block
  i reads keys [0, offset + (i + 1) * block) only. Same shapes and result as `attention` (the skipped scores are
  masked there, so they add exact zeros), for about (n + 1) / 2n of its score work over the queries' own slots with
  n = ceil(T / block) blocks: on a CPU the [B, heads, T, S] softmax, not the products, is most of its time.
  offset > 0: a shared prompt's keys come first (`forward_shared`)."""
  t = q.shape[1]
  if block <= 0 or t <= block:
    return attention(q, k, v, mask)
  outs = []
  for start in range(0, t, block):
    end = offset + min(start + block, t)
    outs.append(attention(q[:, start:start + block], k[:, :end], v[:, :end], mask[:, start:start + block, :end]))
  return jnp.concatenate(outs, axis=1)


def cached_attention(q: jax.Array, k: jax.Array, v: jax.Array, layer: jax.Array, mask: jax.Array,
                     k_new: jax.Array, v_new: jax.Array, mask_new: jax.Array, n_used: jax.Array,
                     block: int = 64) -> jax.Array:
  """`attention` over one layer of a KV cache plus the new tokens, reading only the slots in use (flash-decoding).

  q [B, T, heads, hd]; the whole cache k/v [layers, B, kv_heads, S, hd] and this layer's index; mask bool[B, T, S]
  over the cache slots; new k/v [B, T, kv_heads, hd] with mask_new [B, T, T]; n_used int32[]: slots >= n_used
  are masked for every query (the cache's write index).
  Equals `attention` over this layer's cache slots and the new tokens side by side: an online softmax runs over
  the new block, then over blocks of `block` slots up to n_used in a while loop, each sliced straight out of the
  cache (no per-layer copy), so a decoding step costs what the tokens written so far cost rather than the cache's
  capacity (on a CPU, reading unused slots was most of a decoding step).
  Not reverse-differentiable (training uses `forward`, which has no cache).
  """
  b, t, h, hd = q.shape
  _, _, kvh, s_max, _ = k.shape
  block = min(block, s_max)
  q = q.reshape(b, t, kvh, h // kvh, hd).astype(jnp.float32) / math.sqrt(hd)
  low = jnp.finfo(jnp.float32).min

  def merge(carry, s, mask, v, spec):  # fold scores [B, kv, g, T, s] and their values into (max, sum, acc)
    m, l, acc = carry
    s = jnp.where(mask[:, None, None], s, low)
    m2 = jnp.maximum(m, s.max(-1))
    p = jnp.exp(s - m2[..., None])
    scale = jnp.exp(m - m2)
    acc = acc * scale[..., None] + jnp.einsum(spec, p, v.astype(jnp.float32))
    return m2, l * scale + p.sum(-1), acc

  s_new = jnp.einsum("btkgd,bskd->bkgts", q, k_new.astype(jnp.float32))
  m0 = jnp.where(mask_new[:, None, None], s_new, low).max(-1)
  init = (m0, jnp.zeros_like(m0), jnp.zeros((b, kvh, h // kvh, t, hd), jnp.float32))
  init = merge(init, s_new, mask_new, v_new, "bkgts,bskd->bkgtd")
  slots = jnp.arange(block)

  def body(c):
    i, carry = c
    start = jnp.minimum(i * block, s_max - block)  # the last block may overlap the previous one: mask the overlap
    kb = jax.lax.dynamic_slice(k, (layer, 0, 0, start, 0), (1, b, kvh, block, hd))[0]  # [B, kv, block, hd]
    vb = jax.lax.dynamic_slice(v, (layer, 0, 0, start, 0), (1, b, kvh, block, hd))[0]
    mb = jax.lax.dynamic_slice_in_dim(mask, start, block, axis=2) & (start + slots >= i * block)
    s = jnp.einsum("btkgd,bksd->bkgts", q, kb.astype(jnp.float32))
    return i + 1, merge(carry, s, mb, vb, "bkgts,bksd->bkgtd")

  n_blocks = (jnp.minimum(n_used, s_max) + block - 1) // block
  _, (m, l, acc) = jax.lax.while_loop(lambda c: c[0] < n_blocks, body, (jnp.zeros((), jnp.int32), init))
  out = acc / l[..., None]  # l >= 1: the running max's own term
  return jnp.moveaxis(out, 3, 1).reshape(b, t, h, hd).astype(v_new.dtype)


class Attention(Projections):

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    d, h, k, hd = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    self.cfg = cfg
    self._weight(rngs, cfg, "q", (d, h, hd), ("embed", "heads", "head_dim"), 1)
    self._weight(rngs, cfg, "k", (d, k, hd), ("embed", "kv_heads", "head_dim"), 1)
    self._weight(rngs, cfg, "v", (d, k, hd), ("embed", "kv_heads", "head_dim"), 1)
    self._weight(rngs, cfg, "o", (h, hd, d), ("heads", "head_dim", "embed"), 2)
    if cfg.qkv_bias:
      self.q_bias = _param(rngs, (h, hd), ("heads", "head_dim"), cfg, init="zeros")
      self.k_bias = _param(rngs, (k, hd), ("kv_heads", "head_dim"), cfg, init="zeros")
      self.v_bias = _param(rngs, (k, hd), ("kv_heads", "head_dim"), cfg, init="zeros")

  def qkv(self, x: jax.Array, positions: jax.Array, key: jax.Array | None = None):
    """x [B, T, d] -> q [B, T, heads, hd], k, v [B, T, kv_heads, hd]; q and k rotated."""
    dt = x.dtype
    q, k, v = (self.project(n, x, 1, key) for n in ("q", "k", "v"))
    if self.cfg.qkv_bias:
      q, k, v = q + self.q_bias[...].astype(dt), k + self.k_bias[...].astype(dt), v + self.v_bias[...].astype(dt)
    inv_freq = rope_inv_freq(self.cfg)
    return apply_rope(q, positions, inv_freq), apply_rope(k, positions, inv_freq), v

  def out(self, y: jax.Array, key: jax.Array | None = None) -> jax.Array:
    """y [B, T, heads, hd] -> [B, T, d]."""
    return self.project("o", y, 2, key)


class MLP(Projections):

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.cfg = cfg
    self._weight(rngs, cfg, "gate", (cfg.d_model, cfg.mlp_dim), ("embed", "mlp"), 1)
    self._weight(rngs, cfg, "up", (cfg.d_model, cfg.mlp_dim), ("embed", "mlp"), 1)
    self._weight(rngs, cfg, "down", (cfg.mlp_dim, cfg.d_model), ("mlp", "embed"), 1)

  def __call__(self, x: jax.Array, key: jax.Array | None = None) -> jax.Array:
    h = jax.nn.silu(self.project("gate", x, 1, key)) * self.project("up", x, 1, key)
    return self.project("down", h, 1, key)


class Block(nnx.Module):

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.attn_norm = _param(rngs, (cfg.d_model,), ("embed",), cfg, init="ones")
    self.attn = Attention(cfg, rngs)
    self.mlp_norm = _param(rngs, (cfg.d_model,), ("embed",), cfg, init="ones")
    self.mlp = MLP(cfg, rngs)
    self.cfg = cfg


class Transformer(nnx.Module):
  """tokens -> logits. Parameters (logical axes):

  embed      [vocab, d]                      ("vocab", "embed")
  blocks.*   [layers, ...]                   ("layers", ...)  q: (embed, heads, head_dim), o: (heads, head_dim,
                                             embed), gate/up: (embed, mlp), down: (mlp, embed), norms: (embed,)
  final_norm [d]                             ("embed",)
  lm_head    [d, vocab] (untied only)        ("embed", "vocab")
  """

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.embed = _param(rngs, (cfg.vocab_size, cfg.d_model), ("vocab", "embed"), cfg)

    @nnx.split_rngs(splits=cfg.n_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def make_blocks(rngs):
      return Block(cfg, rngs)

    self.blocks = make_blocks(rngs)
    self.final_norm = _param(rngs, (cfg.d_model,), ("embed",), cfg, init="ones")
    if not cfg.tie_embeddings:
      self.lm_head = _param(rngs, (cfg.d_model, cfg.vocab_size), ("embed", "vocab"), cfg)

  def __call__(self, tokens: jax.Array, positions: jax.Array, attn_mask: jax.Array | None = None,
               cache: Cache | None = None, dropout_key: jax.Array | None = None,
               causal_block: int = 0, prefix: tuple[jax.Array, jax.Array] | None = None,
               head: bool = True) -> tuple[jax.Array, Any]:
    """Run T new tokens.

    tokens, positions: int32[B, T].
    Without a cache the tokens attend to each other: attn_mask bool[B, T, T], default causal.
    With a cache the new keys/values are written to slots [cache.index, cache.index + T) of every row and the
    queries attend over all S = max_len slots: attn_mask bool[B, T, S], default "slot is valid or new, and not
    after the query's own slot". The returned cache has k and v updated; `valid`, `pos` and `index` are the
    caller's bookkeeping (`prefill` / `decode_step` do it).
    dropout_key: LoRA dropout (cfg.lora_dropout) is applied only when given.
    causal_block > 0 (no cache, T == S): attn_mask is causal, and each block of that many queries skips the keys
    after it (`causal_attention`).
    prefix (no cache): keys and values k, v [layers, B, P, kv_heads, hd] of P earlier tokens, every layer's, put
    before the new tokens' own: attn_mask is then bool[B, T, P + T] over both (`forward_shared`).
    Returns logits float32[B, T, vocab] and the cache (None without one). head=False (no cache): no logits (None);
    the second value is every layer's new keys and values (k, v), each [layers, B, T, kv_heads, hd].
    """
    cfg = self.cfg
    b, t = tokens.shape
    dt = cfg.compute_dtype
    # train_layers: the embedding is frozen (stop_gradient) and so is everything computed from it below the top
    # train_layers blocks.
    freeze = (lambda a: jax.lax.stop_gradient(a)) if cfg.train_layers else (lambda a: a)  # noqa: E731
    embed = freeze(self.embed[...])
    x = jnp.take(embed, tokens, axis=0).astype(dt)
    if cache is None:
      if attn_mask is None:
        attn_mask = jnp.broadcast_to(jnp.tril(jnp.ones((t, t), bool)), (b, t, t))
    else:
      if attn_mask is None:
        attn_mask = _cache_mask(cache.valid, cache.index, jnp.ones((b, t), bool))
    graphdef, block_state = nnx.split(self.blocks)
    if cache is not None:
      slots = jnp.arange(cache.k.shape[3])
      fresh = (slots >= cache.index) & (slots < cache.index + t)  # slots being overwritten now
      mask_old = attn_mask & ~fresh
      mask_new = jax.lax.dynamic_slice_in_dim(attn_mask, cache.index, t, axis=2)

    def layer(x, xs):
      x = shard_rows(x)
      state, index = xs[:2]
      blk = nnx.merge(graphdef, state)
      key = None if dropout_key is None else jax.random.fold_in(dropout_key, index)
      h = rms_norm(x, blk.attn_norm[...], cfg.rms_eps)
      q, k, v = blk.attn.qkv(h, positions, key)
      if prefix is not None:  # this layer's keys and values of the shared prompt, then the new tokens' own
        kp, vp = xs[2]
        y = causal_attention(q, jnp.concatenate([kp.astype(k.dtype), k], 1),
                             jnp.concatenate([vp.astype(v.dtype), v], 1), attn_mask, causal_block, kp.shape[1])
      elif cache is None:
        y = causal_attention(q, k, v, attn_mask, causal_block)
      else:
        y = cached_attention(q, cache.k, cache.v, index, mask_old, k, v, mask_new, cache.index, cfg.decode_block)
      x = x + blk.attn.out(y, key)
      x = x + blk.mlp(rms_norm(x, blk.mlp_norm[...], cfg.rms_eps), key)
      return shard_rows(x), (k, v)

    if cfg.remat:
      layer = jax.checkpoint(layer)
    # The cache is read inside the layer loop by (layer, block) slices and written once afterwards, so a loop
    # carrying it (generate, the rollout) can update it in place.
    xs = (block_state, jnp.arange(cfg.n_layers)) + (() if prefix is None else (prefix,))
    n_frozen = cfg.n_layers - cfg.train_layers if cfg.train_layers else 0
    if n_frozen:  # two loops: no gradient flows into the lower one, so its backward pass is never built
      low, high = (jax.tree.map(lambda a: a[:n_frozen], xs), jax.tree.map(lambda a: a[n_frozen:], xs))
      x, (k_low, v_low) = jax.lax.scan(layer, x, jax.lax.stop_gradient(low))
      x, (k_high, v_high) = jax.lax.scan(layer, jax.lax.stop_gradient(x), high)
      k_new, v_new = jnp.concatenate([k_low, k_high]), jnp.concatenate([v_low, v_high])
    else:
      x, (k_new, v_new) = jax.lax.scan(layer, x, xs)
    if not head:
      return None, (k_new, v_new)
    if cache is not None:
      write = lambda old, new: jax.lax.dynamic_update_slice(  # noqa: E731  new [L, B, T, kv, hd] -> head-major
          old, new.swapaxes(2, 3).astype(old.dtype), (0, 0, 0, cache.index, 0))
      cache = cache._replace(k=write(cache.k, k_new), v=write(cache.v, v_new))
    x = rms_norm(x, self.final_norm[...], cfg.rms_eps)
    head = embed.T if cfg.tie_embeddings else self.lm_head[...]
    logits = jnp.einsum("btd,dv->btv", x, head.astype(dt), preferred_element_type=jnp.float32)
    return logits, cache


def _row_spec():
  """(PartitionSpec of the batch axis, number of row shards) on the current mesh; (None, 1) without one."""
  mesh = jax.sharding.get_abstract_mesh()
  if not mesh.axis_names:
    return None, 1
  from agent_rl import sharding  # lazily: sharding is the mesh layer above the model

  spec = sharding.logical_to_spec(("batch",), mesh=mesh)
  axes = (spec[0],) if isinstance(spec[0], str) else tuple(spec[0] or ())
  return spec, math.prod(mesh.shape[a] for a in axes)


def row_shards() -> int:
  """How many ways the current mesh splits a batch's rows (1 without a mesh)."""
  return _row_spec()[1]


def shard_rows(x: jax.Array) -> jax.Array:
  """x [B, ...] with its rows split over the current mesh's batch axes (`sharding.DEFAULT_RULES["batch"]`).

  Unchanged without a mesh (`jax.set_mesh`), on a mesh whose batch axes have size 1, or when B does not divide.
  Without this constraint XLA carries the weights' "embed" sharding into the residual stream, so every device
  computes every row of a microbatch (activations and logits not split at all).
  """
  spec, size = _row_spec()
  if size == 1 or x.ndim == 0 or x.shape[0] % size:
    return x
  return jax.lax.with_sharding_constraint(x, spec)


def take_rows(cache: Cache, rows: jax.Array) -> Cache:
  """The cache of rows `rows` int32[n] only (k and v keep their [layers] axis first)."""
  return cache._replace(k=cache.k[:, rows], v=cache.v[:, rows], valid=cache.valid[rows], pos=cache.pos[rows])


def _cache_mask(cache_valid: jax.Array, index: jax.Array, new_valid: jax.Array) -> jax.Array:
  """bool[B, T, S]: query t (at slot index + t) sees slot s iff s holds a real token and s <= index + t."""
  t = new_valid.shape[1]
  valid = jax.lax.dynamic_update_slice(cache_valid, new_valid, (0, index))
  slots = jnp.arange(cache_valid.shape[1])
  causal = slots[None, :] <= index + jnp.arange(t)[:, None]  # [T, S]
  return causal[None] & valid[:, None, :]


# ---------------------------------------------------------------------------------------------------------------
# Pure entry points used by training and rollout


def positions_from_valid(valid: jax.Array, start: jax.Array | int = 0) -> jax.Array:
  """int32[B, T]: position id of each token = start + number of valid tokens before it (0 on leading padding)."""
  start = jnp.asarray(start, jnp.int32)
  start = start[:, None] if start.ndim else start
  return jnp.maximum(start + jnp.cumsum(valid, axis=1, dtype=jnp.int32) - 1, start).astype(jnp.int32)


# Query rows per block of the training forward's causal attention (`causal_attention`). Loss gradients on the
# 2-core CPU, without blocks / blocks of 128 / of 64: the default model [8, 384] 0.364 / 0.307 / 0.300 s and
# [8, 512] 0.594 / 0.446 / 0.436 s; SmolLM2 with LoRA [4, 256] 5.35 / 5.24 / 5.40 s and [4, 512] 12.9 / 11.2 /
# 11.4 s. Small heads spend their attention time on the softmax, which the skipped blocks save.
CAUSAL_BLOCK = 128


def forward(model: Transformer, tokens: jax.Array, valid: jax.Array, dropout_key: jax.Array | None = None,
            causal_block: int = CAUSAL_BLOCK) -> jax.Array:
  """Full-sequence logits for training. tokens int32[B, T], valid bool[B, T] -> float32[B, T, vocab].

  Causal attention restricted to valid tokens; positions count valid tokens (left padding gives each row
  positions 0, 1, ... from its first real token). Logits at padding positions are meaningless.
  dropout_key turns on LoRA dropout (if the config has any). causal_block: see `causal_attention` (0: one block).
  """
  logits, _ = model(tokens, positions_from_valid(valid), _causal_mask(valid), dropout_key=dropout_key,
                    causal_block=causal_block)
  return logits


def _causal_mask(valid: jax.Array) -> jax.Array:
  """bool[B, T, T]: query t sees slot s iff s <= t and s holds a real token (valid bool[B, T])."""
  t = valid.shape[1]
  return jnp.tril(jnp.ones((t, t), bool))[None] & valid[:, None, :]


def forward_packed(model: Transformer, tokens: jax.Array, segments: jax.Array, dropout_key: jax.Array | None = None,
                   causal_block: int = CAUSAL_BLOCK) -> jax.Array:
  """`forward` for rows that hold several sequences end to end (`packing.pack`). tokens int32[B, T], segments
  int32[B, T] (0 on padding, k on the row's k-th sequence) -> float32[B, T, vocab].

  A token sees only the earlier tokens of its own sequence and its position counts from that sequence's start, so
  each sequence's logits are those `forward` gives it alone in a row (up to float reduction order); so do rows of
  one sequence each with segments = valid (as int32).
  """
  return model(tokens, positions_from_segments(segments), _segment_mask(segments), dropout_key=dropout_key,
               causal_block=causal_block)[0]


def positions_from_segments(segments: jax.Array) -> jax.Array:
  """int32[B, T]: each token's index within its run of equal segment ids (segments int[B, T])."""
  t = jnp.arange(segments.shape[1], dtype=jnp.int32)
  starts = segments != jnp.pad(segments[:, :-1], ((0, 0), (1, 0)), constant_values=-1)
  return t - jax.lax.cummax(jnp.where(starts, t, 0), axis=1)


def _segment_mask(segments: jax.Array) -> jax.Array:
  """bool[B, T, T]: query t sees slot s iff s <= t and both hold the same sequence (segment id > 0)."""
  t = segments.shape[1]
  same = (segments[:, :, None] == segments[:, None, :]) & (segments[:, None, :] > 0)
  return jnp.tril(jnp.ones((t, t), bool))[None] & same


def forward_shared(model: Transformer, prefix: jax.Array, prefix_valid: jax.Array, tokens: jax.Array,
                   valid: jax.Array, causal_block: int = CAUSAL_BLOCK) -> jax.Array:
  """`forward` for rows that share a prompt, the prompt run once: logits of the rows' own tokens only.

  prefix int32[N, P], prefix_valid bool[N, P]: N prompts (valid tokens left-aligned); tokens int32[N * R, T],
  valid bool[N * R, T]: R continuations of each prompt, rows of one prompt consecutive. Row r continues prompt
  r // R: its positions start after that prompt's valid tokens and its tokens see them all.
  Returns float32[N * R, T, vocab], equal to `forward` over each row's prompt and continuation laid end to end
  (up to float reduction order), for the prompt's share of the work once per prompt instead of once per row; the
  gradient reaches the prompt's keys and values through every row that reads them.
  """
  p, t = prefix.shape[1], tokens.shape[1]
  reps = tokens.shape[0] // prefix.shape[0]
  _, (k, v) = model(prefix, positions_from_valid(prefix_valid), _causal_mask(prefix_valid),
                    causal_block=causal_block, head=False)
  rep = lambda x: jnp.repeat(x, reps, axis=1)  # noqa: E731  [L, N, ...] -> [L, N * R, ...]
  seen = jnp.repeat(prefix_valid, reps, axis=0)  # [N * R, P]
  mask = jnp.concatenate([jnp.broadcast_to(seen[:, None, :], (tokens.shape[0], t, p)), _causal_mask(valid)],
                         axis=2)
  start = jnp.sum(seen, axis=1, dtype=jnp.int32)
  logits, _ = model(tokens, positions_from_valid(valid, start), mask, causal_block=causal_block,
                    prefix=(rep(k), rep(v)))
  return logits


def prefill(model: Transformer, cache: Cache, tokens: jax.Array, valid: jax.Array) -> tuple[jax.Array, Cache]:
  """Append a chunk of P tokens to every row: tokens int32[B, P], valid bool[B, P] (left-padded prompts).

  Writes slots [index, index + P), continues each row's positions from cache.pos, and returns
  logits float32[B, P, vocab] (logits[:, -1] predicts each row's next token when the chunk is left-padded) and
  the updated cache. Works on an empty cache (the prompt) and on a partly filled one (e.g. a tool response
  inserted mid-episode).
  """
  positions = positions_from_valid(valid, cache.pos)
  mask = _cache_mask(cache.valid, cache.index, valid)
  logits, cache = model(tokens, positions, mask, cache)
  cache = cache._replace(valid=jax.lax.dynamic_update_slice(cache.valid, valid, (0, cache.index)),
                         pos=cache.pos + jnp.sum(valid, axis=1, dtype=jnp.int32),
                         index=cache.index + tokens.shape[1])
  return logits, cache


def decode_step(model: Transformer, cache: Cache, token: jax.Array) -> tuple[jax.Array, Cache]:
  """One lockstep decoding step: token int32[B] -> logits float32[B, vocab], cache advanced by one slot."""
  logits, cache = prefill(model, cache, token[:, None], jnp.ones((token.shape[0], 1), bool))
  return logits[:, 0], cache
