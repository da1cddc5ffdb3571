"""`ModelConfig.train_layers`: the same values, gradients only into the top blocks (exactly zero below and in the
embedding), the same gradient there as full training, no backward pass through the frozen blocks, and an optimizer
that leaves frozen parameters bit-identical even with weight decay."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from agent_rl import lora
from agent_rl import model as M
from agent_rl import steps

CFG = M.tiny(vocab_size=64, d_model=32, n_layers=4, n_heads=2, n_kv_heads=1, head_dim=16, mlp_dim=48)
TOKENS = jnp.asarray(np.random.RandomState(0).randint(0, 64, (2, 9)), jnp.int32)
VALID = jnp.asarray(np.arange(9)[None] >= np.array([[0], [3]]))


def _loss(params, graphdef, frozen=nnx.State({})):
  logits = M.forward(nnx.merge(graphdef, params, frozen), TOKENS, VALID)
  return jnp.mean(jnp.where(VALID, jax.nn.log_softmax(logits)[..., 5], 0.0))


def _by_path(tree):
  return {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.mark.parametrize("n", [1, 3, 4])
def test_same_values_and_gradient_only_in_the_top_blocks(n):
  graphdef, params, _ = lora.split(M.Transformer(CFG, rngs=nnx.Rngs(0)))
  top = lora.with_train_layers(graphdef, CFG, n)
  assert nnx.merge(top, params).cfg.train_layers == n
  np.testing.assert_array_equal(M.forward(nnx.merge(top, params), TOKENS, VALID),
                                M.forward(nnx.merge(graphdef, params), TOKENS, VALID))
  full, part = _by_path(jax.grad(_loss)(params, graphdef)), _by_path(jax.grad(_loss)(params, top))
  lo = CFG.n_layers - n
  for name, g in part.items():
    if "blocks" in name:
      assert np.all(g[:lo] == 0), name
      np.testing.assert_allclose(g[lo:], full[name][lo:], rtol=1e-5, atol=1e-7, err_msg=name)
      assert np.abs(g[lo:]).max() > 0, name
    elif "embed" in name:
      assert np.all(g == 0) and np.abs(full[name]).max() > 0
    else:  # final_norm
      np.testing.assert_allclose(g, full[name], rtol=1e-5, atol=1e-7, err_msg=name)


def test_no_backward_pass_through_the_frozen_blocks():
  """Forward runs every block; the compiled gradient has one layer loop more than the forward (the top blocks'
  backward), not two: the frozen blocks' backward is never built."""
  graphdef, params, _ = lora.split(M.Transformer(CFG, rngs=nnx.Rngs(0)))
  top = lora.with_train_layers(graphdef, CFG, 1)
  loops = lambda gd: jax.jit(jax.grad(_loss), static_argnums=1).lower(params, gd).as_text().count("while")  # noqa
  assert (loops(graphdef), loops(top)) == (2, 3)  # (forward, backward); (lower, upper forward, upper backward)


def test_cached_decoding_unchanged():
  graphdef, params, _ = lora.split(M.Transformer(CFG, rngs=nnx.Rngs(0)))
  outs = []
  for gd in (graphdef, lora.with_train_layers(graphdef, CFG, 2)):
    model = nnx.merge(gd, params)
    cache = M.init_cache(CFG, 2, 16)
    logits, cache = M.prefill(model, cache, TOKENS, VALID)
    step, _ = M.decode_step(model, cache, jnp.array([3, 7], jnp.int32))
    outs.append((logits, step))
  jax.tree.map(np.testing.assert_array_equal, outs[0], outs[1])


@pytest.mark.parametrize("lora_rank", [0, 4])
def test_sft_step_leaves_frozen_parameters_bit_identical(lora_rank):
  model = M.Transformer(CFG, rngs=nnx.Rngs(0))
  if lora_rank:
    model = lora.add_lora(model, lora_rank=lora_rank)
  graphdef, params, frozen = lora.split(model)
  cfg = model.cfg
  n, lo = 2, cfg.n_layers - 2
  top = lora.with_train_layers(graphdef, cfg, n)
  tx = steps.make_optimizer(1e-2, weight_decay=0.1, mask=lora.update_mask(params, cfg.n_layers, n))
  opt_state = tx.init(params)
  mask = jnp.ones_like(TOKENS, bool) & VALID
  before = _by_path(params)
  copy = lambda t: jax.tree.map(jnp.copy, t)  # noqa: E731  sft_step donates its inputs
  new = copy(params)
  for _ in range(2):  # the second step has nonzero Adam moments
    new, opt_state, _ = steps.sft_step(top, new, opt_state, TOKENS, VALID, mask, frozen, tx=tx, microbatch=1)
  after = _by_path(new)
  for name, x in after.items():
    if "blocks" in name:
      np.testing.assert_array_equal(x[:lo], before[name][:lo], err_msg=name)
      if not lora_rank or "lora_b" in name or "lora_a" in name:
        assert np.abs(x[lo:] - before[name][lo:]).max() > 0, name
    elif "embed" in name:
      np.testing.assert_array_equal(x, before[name])
  # Without the mask, weight decay moves the frozen blocks' weights though their gradient is zero.
  plain = steps.make_optimizer(1e-2, weight_decay=0.1)
  moved, _, _ = steps.sft_step(top, copy(params), plain.init(params), TOKENS, VALID, mask, frozen, tx=plain,
                               microbatch=1)
  if not lora_rank:  # (fresh adapters' b is zero: decay leaves zeros alone)
    assert np.abs(_by_path(moved)["['embed'].value"] - before["['embed'].value"]).max() > 0


def test_update_mask_shapes_and_no_mask_when_everything_trains():
  _, params, _ = lora.split(M.Transformer(CFG, rngs=nnx.Rngs(0)))
  assert lora.update_mask(params, CFG.n_layers, 0) is None
  mask = _by_path(lora.update_mask(params, CFG.n_layers, 1))
  assert mask["['embed'].value"] == 0 and mask["['final_norm'].value"] == 1
  np.testing.assert_array_equal(mask["['blocks']['mlp']['up'].value"].ravel(), [0, 0, 0, 1])
  assert isinstance(steps.make_optimizer(1e-3, 0.0), optax.GradientTransformation)


@pytest.mark.parametrize("n", [-1, 5])
def test_out_of_range_is_an_error_naming_the_field(n):
  with pytest.raises(ValueError, match=f"ModelConfig.train_layers={n}: expected 0"):
    CFG.replace(train_layers=n)
