"""Transformer forward / prefill / decode agree with each other; generation and sampling behave as specified."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from agent_rl import model as M
from agent_rl import sampling

VOCAB = 256
CFG = M.tiny(vocab_size=VOCAB, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, mlp_dim=128)
PAD = (0, 3, 6)  # left padding per row: prompts of different lengths


@pytest.fixture(scope="module")
def model():
  return M.Transformer(CFG, rngs=nnx.Rngs(0))


def batch(length, seed=1, pad=PAD):
  tokens = jax.random.randint(jax.random.key(seed), (len(pad), length), 0, VOCAB, jnp.int32)
  valid = jnp.arange(length)[None, :] >= jnp.asarray(pad)[:, None]
  return jnp.where(valid, tokens, 0), valid


def test_shapes_and_dtypes(model):
  tokens, valid = batch(9)
  logits = nnx.jit(M.forward)(model, tokens, valid)
  assert logits.shape == (3, 9, VOCAB) and logits.dtype == jnp.float32
  cache = M.init_cache(CFG, 3, 16)
  assert cache.k.shape == (CFG.n_layers, 3, CFG.n_kv_heads, 16, CFG.head_dim) and cache.k.dtype == jnp.float32
  assert cache.valid.dtype == jnp.bool_ and cache.pos.dtype == jnp.int32 and cache.index.shape == ()
  logits, cache = nnx.jit(M.prefill)(model, cache, tokens, valid)
  assert logits.shape == (3, 9, VOCAB)
  np.testing.assert_array_equal(cache.pos, [9, 6, 3])
  assert int(cache.index) == 9
  np.testing.assert_array_equal(cache.valid[:, :9], valid)
  assert not cache.valid[:, 9:].any()
  step_logits, cache = nnx.jit(M.decode_step)(model, cache, jnp.array([1, 2, 3], jnp.int32))
  assert step_logits.shape == (3, VOCAB) and step_logits.dtype == jnp.float32
  np.testing.assert_array_equal(cache.pos, [10, 7, 4])
  assert int(cache.index) == 10 and cache.valid[:, 9].all()


def test_positions_count_valid_tokens_only():
  valid = jnp.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [1, 0, 1, 0, 1]], bool)
  np.testing.assert_array_equal(M.positions_from_valid(valid), [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4], [0, 0, 1, 1, 2]])
  np.testing.assert_array_equal(M.positions_from_valid(valid, jnp.array([5, 0, 2])),
                                [[5, 5, 5, 6, 7], [0, 1, 2, 3, 4], [2, 2, 3, 3, 4]])


def test_left_padding_does_not_change_valid_logits(model):
  """A row's logits depend only on its real tokens: padding it more on the left changes nothing."""
  tokens, valid = batch(8, pad=(2, 2, 2))
  more = jnp.concatenate([jnp.full((3, 4), 7, jnp.int32), tokens], 1)
  more_valid = jnp.concatenate([jnp.zeros((3, 4), bool), valid], 1)
  a = M.forward(model, tokens, valid)[:, 2:]
  b = M.forward(model, more, more_valid)[:, 6:]
  np.testing.assert_allclose(a, b, atol=1e-5)


def test_prefill_then_decode_matches_forward(model):
  """Chunked prefill (prompt, then an inserted chunk with its own padding) + decode == one full forward."""
  tokens, valid = batch(14)
  full = nnx.jit(M.forward)(model, tokens, valid)
  chunk_valid = valid.at[1, 8].set(False)  # a padding slot inside the second chunk
  full_gap = nnx.jit(M.forward)(model, tokens, chunk_valid)
  cache = M.init_cache(CFG, 3, 20)
  prefill, decode = nnx.jit(M.prefill), nnx.jit(M.decode_step)
  l1, cache = prefill(model, cache, tokens[:, :6], chunk_valid[:, :6])
  l2, cache = prefill(model, cache, tokens[:, 6:10], chunk_valid[:, 6:10])
  steps = []
  for i in range(10, 14):
    step, cache = decode(model, cache, tokens[:, i])
    steps.append(step[:, None])
  got = jnp.concatenate([l1, l2, *steps], 1)
  mask = chunk_valid[..., None]
  np.testing.assert_allclose(jnp.where(mask, got, 0), jnp.where(mask, full_gap, 0), atol=1e-5)
  # the gap only changes row 1
  np.testing.assert_allclose(jnp.where(valid[..., None], full, 0)[0::2], jnp.where(mask, got, 0)[0::2], atol=1e-5)


def greedy_by_recomputation(model, tokens, valid, n):
  """Greedy decoding by a full forward per token over a fixed-size buffer (right part invalid until written)."""
  fwd = nnx.jit(M.forward)
  b, p = tokens.shape
  tokens = jnp.concatenate([tokens, jnp.zeros((b, n), jnp.int32)], 1)
  valid = jnp.concatenate([valid, jnp.zeros((b, n), bool)], 1)
  for i in range(n):
    nxt = jnp.argmax(fwd(model, tokens, valid)[:, p + i - 1], -1).astype(jnp.int32)
    tokens, valid = tokens.at[:, p + i].set(nxt), valid.at[:, p + i].set(True)
  return tokens[:, p:]


def test_greedy_generate_equals_recomputation(model):
  tokens, valid = batch(7)
  new, new_valid = sampling.generate(model, tokens, valid, jax.random.key(0), 12, eos_id=-1, temperature=0.0)
  assert new.shape == (3, 12) and new.dtype == jnp.int32 and new_valid.all()
  np.testing.assert_array_equal(new, greedy_by_recomputation(model, tokens, valid, 12))


def test_generate_stops_rows_at_eos(model):
  tokens, valid = batch(7)
  free, _ = sampling.generate(model, tokens, valid, jax.random.key(0), 12, eos_id=-1)
  eos = int(free[0, 4])
  new, new_valid = sampling.generate(model, tokens, valid, jax.random.key(0), 12, eos_id=(VOCAB + 5, eos))
  for row in range(3):
    hits = np.flatnonzero(np.asarray(free[row]) == eos)
    stop = hits[0] if len(hits) else 11
    np.testing.assert_array_equal(new_valid[row], np.arange(12) <= stop)
    np.testing.assert_array_equal(new[row, :stop + 1], free[row, :stop + 1])
    assert (np.asarray(new[row, stop + 1:]) == VOCAB + 5).all()  # filler is the first EOS id


def test_split_merge_scan_pattern(model):
  """The docstring's pattern: params as explicit state, merged inside jit, cache carried by lax.scan."""
  graphdef, params = nnx.split(model)
  tokens, valid = batch(7)

  @jax.jit
  def greedy(params, cache, tokens, valid):
    m = nnx.merge(graphdef, params)
    logits, cache = M.prefill(m, cache, tokens, valid)

    def body(carry, _):
      cache, token = carry
      logits, cache = M.decode_step(m, cache, token)
      nxt = jnp.argmax(logits, -1).astype(jnp.int32)
      return (cache, nxt), nxt

    first = jnp.argmax(logits[:, -1], -1).astype(jnp.int32)
    _, out = jax.lax.scan(body, (cache, first), None, length=5)
    return jnp.concatenate([first[:, None], out.T], 1)

  got = greedy(params, M.init_cache(CFG, 3, 20), tokens, valid)
  want, _ = sampling.generate(model, tokens, valid, jax.random.key(0), 6, eos_id=-1)
  np.testing.assert_array_equal(got, want)


def test_gradients_flow_to_every_parameter(model):
  tokens, valid = batch(6)

  def loss(m):
    return jnp.mean(jax.nn.log_softmax(M.forward(m, tokens, valid))[..., 0] * valid)

  grads = nnx.jit(nnx.grad(loss))(model)
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    assert jnp.isfinite(g).all() and jnp.abs(g).max() > 0, path


def test_remat_gives_same_gradients(model):
  tokens, valid = batch(6)
  remat = nnx.merge(nnx.graphdef(M.Transformer(CFG.replace(remat=True), rngs=nnx.Rngs(0))), nnx.state(model))

  def loss(m):
    return jnp.sum(M.forward(m, tokens, valid) ** 2 * valid[..., None])

  for a, b in zip(jax.tree.leaves(nnx.jit(nnx.grad(loss))(model)), jax.tree.leaves(nnx.jit(nnx.grad(loss))(remat))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(jnp.abs(b).max()))


@pytest.mark.parametrize("n_in,x_shape,w_shape", [(1, (2, 5, 6), (6, 3, 4)), (2, (2, 5, 3, 4), (3, 4, 6)),
                                                  (1, (7, 6), (6, 8))])
def test_dense_equals_tensordot_forward_and_backward(n_in, x_shape, w_shape):
  kx, kw, kd = jax.random.split(jax.random.key(0), 3)
  x, w = jax.random.normal(kx, x_shape), jax.random.normal(kw, w_shape)
  dy = jax.random.normal(kd, x_shape[:len(x_shape) - n_in] + w_shape[n_in:])
  ours = jax.vjp(lambda x, w: M.dense(x, w, n_in), x, w)
  theirs = jax.vjp(lambda x, w: jnp.tensordot(x, w, n_in), x, w)
  np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-6, atol=1e-6)
  for a, b in zip(ours[1](dy), theirs[1](dy)):
    assert a.shape == b.shape and a.dtype == b.dtype
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  # bfloat16 in, bfloat16 gradients out
  bx, bw = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
  gx, gw = jax.vjp(lambda x, w: M.dense(x, w, n_in), bx, bw)[1](dy.astype(jnp.bfloat16))
  assert gx.dtype == gw.dtype == jnp.bfloat16


def test_bfloat16_compute(model):
  cfg = CFG.replace(dtype=jnp.bfloat16, param_dtype="bfloat16")
  bf = nnx.merge(nnx.graphdef(M.Transformer(cfg, rngs=nnx.Rngs(0))),
                 jax.tree.map(lambda x: x.astype(jnp.bfloat16), nnx.state(model)))
  assert cfg.dtype == "bfloat16" and bf.embed[...].dtype == jnp.bfloat16
  tokens, valid = batch(7)
  logits = nnx.jit(M.forward)(bf, tokens, valid)
  assert logits.dtype == jnp.float32 and jnp.isfinite(logits).all()
  ref = M.forward(model, tokens, valid)
  np.testing.assert_allclose(jnp.where(valid[..., None], logits, 0), jnp.where(valid[..., None], ref, 0), atol=0.05)
  assert M.init_cache(cfg, 3, 8).k.dtype == jnp.bfloat16
  new, new_valid = sampling.generate(bf, tokens, valid, jax.random.key(0), 4, eos_id=-1)
  assert new.shape == (3, 4) and new_valid.all()


def test_sample_token_greedy_and_logprob():
  logits = jax.random.normal(jax.random.key(0), (5, 11)) * 3
  token, logprob = sampling.sample_token(jax.random.key(1), logits, 0.0)
  np.testing.assert_array_equal(token, jnp.argmax(logits, -1))
  np.testing.assert_allclose(logprob, jnp.max(jax.nn.log_softmax(logits), -1), rtol=1e-6)
  token, logprob = sampling.sample_token(jax.random.key(1), logits, 0.7, top_p=0.9)
  np.testing.assert_allclose(logprob, jax.nn.log_softmax(logits)[jnp.arange(5), token], rtol=1e-6)


def test_sample_token_frequencies_follow_tempered_softmax():
  logits = jnp.array([[2.0, 1.0, 0.0, -1.0]])
  n = 20000
  keys = jax.random.split(jax.random.key(0), n)
  tokens, _ = jax.vmap(lambda k: sampling.sample_token(k, logits, 2.0))(keys)
  freq = np.bincount(np.asarray(tokens[:, 0]), minlength=4) / n
  want = np.asarray(jax.nn.softmax(logits[0] / 2.0))
  np.testing.assert_allclose(freq, want, atol=4 * np.sqrt(want * (1 - want) / n).max())


def test_top_p_samples_only_the_nucleus():
  probs = jnp.array([0.5, 0.3, 0.15, 0.05])
  logits = jnp.log(probs)[None]
  keys = jax.random.split(jax.random.key(0), 4000)
  tokens, _ = jax.vmap(lambda k: sampling.sample_token(k, logits, 1.0, top_p=0.75))(keys)
  counts = np.bincount(np.asarray(tokens[:, 0]), minlength=4)
  assert counts[2] == counts[3] == 0 and counts[0] > counts[1] > 0  # 0.5 + 0.3 reaches 0.75
  np.testing.assert_allclose(counts[0] / 4000, 0.5 / 0.8, atol=0.04)


def test_config_from_dict_and_errors():
  cd = ml_collections.ConfigDict(CFG.to_dict())
  assert M.ModelConfig.from_dict(cd) == CFG
  with pytest.raises(ValueError, match="unknown key.*n_layer"):
    M.ModelConfig.from_dict({**CFG.to_dict(), "n_layer": 3})
  with pytest.raises(ValueError, match="n_kv_heads"):
    CFG.replace(n_kv_heads=3)
  with pytest.raises(ValueError, match="ModelConfig.dtype"):
    CFG.replace(dtype="int8")
  with pytest.raises(ValueError, match="unknown model preset"):
    M.preset("gpt5")


@pytest.mark.parametrize("name,count", [("qwen2_5_0_5b", 494_032_768), ("qwen2_5_1_5b", 1_543_714_304),
                                        ("qwen2_5_7b", 7_615_616_512), ("llama3_2_1b", 1_235_814_400)])
def test_preset_parameter_counts(name, count):
  """Published parameter counts of the Hugging Face checkpoints; abstract init, nothing allocated."""
  cfg = M.preset(name)
  abstract = nnx.eval_shape(lambda: M.Transformer(cfg, rngs=nnx.Rngs(0)))
  assert sum(x.size for x in jax.tree.leaves(nnx.state(abstract))) == cfg.n_params == count


def test_parameters_carry_logical_axes(model):
  specs = nnx.get_partition_spec(nnx.state(model))
  assert tuple(specs["embed"].get_value()) == ("vocab", "embed")
  assert tuple(specs["blocks"]["attn"]["q"].get_value()) == ("layers", "embed", "heads", "head_dim")
  assert tuple(specs["blocks"]["mlp"]["down"].get_value()) == ("layers", "mlp", "embed")
  for path, spec in jax.tree_util.tree_leaves_with_path(specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)):
    assert len(spec) > 0, path


@pytest.mark.parametrize("s_max,n_used,block", [(150, 140, 64), (150, 150, 64), (150, 0, 64), (40, 17, 64), (128, 65, 32)])
def test_cached_attention_equals_attention_over_cache_and_new_tokens(s_max, n_used, block):
  rng = np.random.default_rng(s_max + n_used)
  layers, b, t, h, kvh, hd = 2, 3, 2, 4, 2, 8
  q = jnp.asarray(rng.normal(size=(b, t, h, hd)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(layers, b, kvh, s_max, hd)), jnp.float32)
  v = jnp.asarray(rng.normal(size=(layers, b, kvh, s_max, hd)), jnp.float32)
  k_new = jnp.asarray(rng.normal(size=(b, t, kvh, hd)), jnp.float32)
  v_new = jnp.asarray(rng.normal(size=(b, t, kvh, hd)), jnp.float32)
  mask = (rng.random((b, t, s_max)) < 0.7) & (np.arange(s_max) < n_used)
  mask[0, 0] = False  # a query that sees no cache slot
  mask_new = np.tril(np.ones((t, t), bool))[None].repeat(b, 0)
  mask_new[1, :, 0] = False
  for layer in range(layers):
    got = M.cached_attention(q, k, v, jnp.int32(layer), jnp.asarray(mask), k_new, v_new,
                                     jnp.asarray(mask_new), jnp.int32(n_used), block=block)
    keys = jnp.concatenate([k[layer].swapaxes(1, 2), k_new], axis=1)  # slot-major [B, S + T, kv, hd]
    vals = jnp.concatenate([v[layer].swapaxes(1, 2), v_new], axis=1)
    full = np.concatenate([mask, mask_new], -1)
    want = M.attention(q, keys, vals, jnp.asarray(full))
    seen = full.any(-1)  # a query that sees nothing is padding: any finite output will do
    np.testing.assert_allclose(np.asarray(got)[seen], np.asarray(want)[seen], atol=1e-5, rtol=1e-5)
    assert np.isfinite(np.asarray(got)).all()


@pytest.mark.parametrize("t,block", [(40, 16), (48, 16), (33, 8), (16, 64), (20, 0)])
def test_causal_attention_equals_attention_with_its_causal_mask(t, block):
  """Skipping the key blocks after each query block changes nothing that a causal mask lets through: values and
  gradients equal full attention's on every query that sees a slot (left padding, right padding, an empty row)."""
  rng = np.random.default_rng(t + block)
  b, h, kvh, hd = 4, 4, 2, 8
  q, k, v = (jnp.asarray(rng.normal(size=(b, t, n, hd)), jnp.float32) for n in (h, kvh, kvh))
  cols = np.arange(t)
  valid = np.stack([cols >= 5, cols < t - 7, np.ones(t, bool), np.zeros(t, bool)])
  mask = jnp.asarray(np.tril(np.ones((t, t), bool))[None] & valid[:, None, :])
  seen = np.asarray(mask.any(-1))
  got = M.causal_attention(q, k, v, mask, block)
  want = M.attention(q, k, v, mask)
  assert got.shape == want.shape == (b, t, h, hd)
  np.testing.assert_allclose(np.asarray(got)[seen], np.asarray(want)[seen], atol=1e-6, rtol=1e-6)
  assert np.isfinite(np.asarray(got)).all()
  w = jnp.asarray(rng.normal(size=(b, t, h, hd)) * seen[:, :, None, None], jnp.float32)
  loss = lambda f: lambda q, k, v: jnp.sum(f(q, k, v) * w)  # noqa: E731
  g_got = jax.grad(loss(lambda q, k, v: M.causal_attention(q, k, v, mask, block)), argnums=(0, 1, 2))(q, k, v)
  g_want = jax.grad(loss(lambda q, k, v: M.attention(q, k, v, mask)), argnums=(0, 1, 2))(q, k, v)
  for a, e in zip(g_got, g_want):
    np.testing.assert_allclose(np.asarray(a), np.asarray(e), atol=1e-5, rtol=1e-5)


def test_forward_with_causal_blocks_equals_one_block(model):
  tokens, valid = batch(40)
  a = M.forward(model, tokens, valid, causal_block=0)
  b = M.forward(model, tokens, valid, causal_block=16)
  np.testing.assert_allclose(np.asarray(b)[np.asarray(valid)], np.asarray(a)[np.asarray(valid)], atol=1e-5,
                             rtol=1e-5)
