"""LoRA adapters: a fresh adapter is the base exactly, merging is the same function, gradients reach only the
adapters, the test-time scale interpolates, dropout only with a key."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from agent_rl import lora
from agent_rl import model as M

CFG = M.tiny(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, mlp_dim=48)
TOKENS = jnp.asarray(np.random.RandomState(0).randint(0, 64, (2, 9)), jnp.int32)
VALID = jnp.asarray(np.arange(9)[None] >= np.array([[0], [3]]))


def _trained(targets=M.LORA_TARGETS, seed=1):
  """A LoRA model whose adapters are random (b nonzero), as after training."""
  base = M.Transformer(CFG, rngs=nnx.Rngs(0))
  model = lora.add_lora(base, seed=seed, lora_rank=4, lora_alpha=8.0, lora_targets=targets)
  graphdef, adapters, frozen = lora.split(model)
  leaves, tree = jax.tree.flatten(adapters)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  adapters = jax.tree.unflatten(tree, [x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
  return base, graphdef, adapters, frozen


def test_fresh_adapters_reproduce_base_exactly():
  base = M.Transformer(CFG, rngs=nnx.Rngs(0))
  model = lora.add_lora(base, lora_rank=8, lora_alpha=16.0)
  np.testing.assert_array_equal(M.forward(model, TOKENS, VALID), M.forward(base, TOKENS, VALID))
  _, adapters, frozen = lora.split(model)
  assert jax.tree.reduce(lambda a, x: a + x.size, adapters, 0) == model.cfg.n_lora_params
  assert all(np.all(np.asarray(x) == 0) for p, x in jax.tree_util.tree_leaves_with_path(adapters)
             if "lora_b" in jax.tree_util.keystr(p))
  assert len(jax.tree.leaves(frozen)) == len(jax.tree.leaves(nnx.state(base)))


@pytest.mark.parametrize("targets", [M.LORA_TARGETS, ("q", "v"), ("o", "down")])
def test_merged_equals_unmerged(targets):
  _, graphdef, adapters, frozen = _trained(targets)
  model = nnx.merge(graphdef, adapters, frozen)
  merged = lora.merge(model)
  assert merged.cfg.lora_rank == 0 and not jax.tree.leaves(nnx.state(merged, nnx.LoRAParam))
  out = M.forward(model, TOKENS, VALID)
  np.testing.assert_allclose(M.forward(merged, TOKENS, VALID), out, atol=1e-5)
  assert np.abs(out - M.forward(M.Transformer(CFG, rngs=nnx.Rngs(0)), TOKENS, VALID)).max() > 1e-3


def test_gradients_reach_only_adapters():
  _, graphdef, adapters, frozen = _trained()

  def loss(adapters, frozen):
    return M.forward(nnx.merge(graphdef, adapters, frozen), TOKENS, VALID).sum()

  g_adapters, g_frozen = jax.grad(loss, argnums=(0, 1))(adapters, frozen)
  assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(g_adapters))
  # In training only `adapters` is differentiated; the base's gradient exists but is never taken. Its
  # structure is the base's, disjoint from the adapters'.
  assert not {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(g_adapters)} & \
      {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(g_frozen)}
  assert all("_lora_" in jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(adapters))


def test_sft_step_updates_only_adapters():
  """steps.sft_step with LoRA: the optimizer state and update cover the adapters; the base is untouched."""
  import optax
  from agent_rl import steps

  _, graphdef, adapters, frozen = _trained()
  frozen_before = jax.tree.map(np.asarray, frozen)
  tx = optax.adam(1e-2)
  opt_state = tx.init(adapters)
  assert len(jax.tree.leaves(opt_state)) == 2 * len(jax.tree.leaves(adapters)) + 1
  before = jax.tree.map(np.asarray, adapters)
  mask = VALID & (jnp.arange(9) > 4)
  new, _, m = steps.sft_step(graphdef, adapters, opt_state, TOKENS, VALID, mask, frozen, tx=tx, microbatch=1)
  assert np.isfinite(float(m["sft/loss"]))
  assert all(np.abs(np.asarray(a) - b).max() > 0 for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(before)))
  jax.tree.map(np.testing.assert_array_equal, frozen, frozen_before)


def test_scale_interpolates_between_base_and_trained():
  base, graphdef, adapters, frozen = _trained()
  at = lambda s: M.forward(nnx.merge(graphdef, lora.scale(adapters, s), frozen), TOKENS, VALID)  # noqa: E731
  np.testing.assert_array_equal(at(0.0), M.forward(base, TOKENS, VALID))
  np.testing.assert_allclose(at(1.0), M.forward(nnx.merge(graphdef, adapters, frozen), TOKENS, VALID), atol=0)
  # The adapter's contribution is linear in the scale: f(2) - f(1) = f(1) - f(0) in the first layer's q output.
  model = lambda s: nnx.merge(graphdef, lora.scale(adapters, s), frozen)  # noqa: E731
  x = jnp.ones((1, 3, CFG.d_model))
  q = [nnx.merge(*nnx.split(model(s).blocks))  # noqa: E731
       for s in (0.0, 1.0, 2.0)]
  outs = [jax.vmap(lambda blk: blk.attn.project("q", x, 1))(b) for b in q]
  np.testing.assert_allclose(outs[2] - outs[1], outs[1] - outs[0], atol=1e-5)


def test_interpolate_full_finetune_weights():
  """A fully fine-tuned run's knob: 0 and 1 give the start and trained weights exactly; linear in between."""
  start = nnx.state(M.Transformer(CFG, rngs=nnx.Rngs(0)), nnx.Param)
  trained = nnx.state(M.Transformer(CFG, rngs=nnx.Rngs(1)), nnx.Param)
  jax.tree.map(np.testing.assert_array_equal, lora.interpolate(start, trained, 0.0), start)
  jax.tree.map(np.testing.assert_array_equal, lora.interpolate(start, trained, 1.0), trained)
  half, two = lora.interpolate(start, trained, 0.5), lora.interpolate(start, trained, 2.0)
  jax.tree.map(lambda h, a, b: np.testing.assert_allclose(h, (a + b) / 2, atol=1e-6), half, start, trained)
  jax.tree.map(lambda t, a, b: np.testing.assert_allclose(t, 2 * b - a, atol=1e-5), two, start, trained)


def test_dropout_only_with_key():
  cfg = CFG.replace(lora_rank=4, lora_dropout=0.5)
  _, graphdef, adapters, frozen = _trained()
  graphdef, _ = nnx.split(nnx.eval_shape(lambda: M.Transformer(cfg, rngs=nnx.Rngs(0))))
  model = nnx.merge(graphdef, adapters, frozen)
  plain = M.forward(model, TOKENS, VALID)
  np.testing.assert_array_equal(M.forward(model, TOKENS, VALID), plain)
  a = M.forward(model, TOKENS, VALID, jax.random.key(0))
  b = M.forward(model, TOKENS, VALID, jax.random.key(1))
  assert np.abs(a - plain).max() > 1e-4 and np.abs(a - b).max() > 1e-4
  np.testing.assert_array_equal(a, M.forward(model, TOKENS, VALID, jax.random.key(0)))


def test_bad_lora_settings_raise():
  with pytest.raises(ValueError, match="lora_targets"):
    CFG.replace(lora_rank=4, lora_targets=("q", "qkv"))
  with pytest.raises(ValueError, match="lora_dropout"):
    CFG.replace(lora_rank=4, lora_dropout=1.0)
  with pytest.raises(ValueError, match="lora_rank must be positive"):
    lora.add_lora(M.Transformer(CFG, rngs=nnx.Rngs(0)), lora_rank=0)
  with pytest.raises(ValueError, match="does not describe"):
    lora.with_config(M.Transformer(CFG, rngs=nnx.Rngs(0)), CFG.replace(d_model=64, lora_rank=2))
