"""Orbax checkpoint round trips, pruning, latest-step restore and bad directories."""
import gc
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from agent_rl import checkpoint


class _Tiny(nnx.Module):
    def __init__(self, rngs):
        self.dense = nnx.Linear(3, 4, rngs=rngs)
        self.scale = nnx.Param(jnp.ones((4,), jnp.bfloat16))


def _train_state(seed):
    """params (nnx state), adamw state after one update, and a typed PRNG key."""
    params = nnx.state(_Tiny(nnx.Rngs(seed)), nnx.Param)
    opt = optax.adamw(1e-2)
    opt_state = opt.init(params)
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
    updates, opt_state = opt.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return {"params": params, "opt_state": opt_state, "rng": jax.random.key(seed + 100)}


def _assert_same(a, b):
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    assert ta == tb
    for x, y in zip(la, lb):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            assert x.dtype == y.dtype
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


META = {"data_position": 123, "config": {"lr": 1e-6, "model": {"name": "qwen2", "layers": 2}}}


def test_round_trip_exact(tmp_path):
    state = _train_state(0)
    manager = checkpoint.make_manager(tmp_path / "ckpt", keep=2, every=1)
    assert checkpoint.save(manager, 7, state, META)
    checkpoint.wait(manager)
    # restore into abstract shapes (what a resumed run has before loading)
    abstract = jax.eval_shape(lambda: _train_state(1))
    got_state, got_meta = checkpoint.restore(manager, abstract)
    _assert_same(got_state, state)
    assert got_meta == META
    # the restored key draws the same numbers
    np.testing.assert_array_equal(jax.random.uniform(got_state["rng"], (3,)),
                                  jax.random.uniform(state["rng"], (3,)))
    manager.close()

    got = checkpoint.restore_latest(tmp_path / "ckpt", _train_state(5))
    assert got is not None
    _assert_same(got[0], state)
    assert got[1] == 7 and got[2] == META


def test_rbg_key_keeps_its_implementation(tmp_path):
    state = {"rng": jax.random.key(3, impl="rbg"), "x": jnp.arange(4.0)}
    manager = checkpoint.make_manager(tmp_path, keep=1, every=1, async_save=False)
    checkpoint.save(manager, 1, state)
    got, meta = checkpoint.restore(manager, jax.eval_shape(lambda: state))
    _assert_same(got, state)
    assert meta == {}
    manager.close()


def test_interval_pruning_and_latest(tmp_path):
    manager = checkpoint.make_manager(tmp_path, keep=2, every=2)
    started = [checkpoint.save(manager, s, {"w": jnp.full((2,), float(s))}, {"step_seen": s})
               for s in range(1, 8)]
    checkpoint.wait(manager)
    assert started == [False, True, False, True, False, True, False]   # every 2 steps
    assert sorted(manager.all_steps()) == [4, 6]                        # last 2 kept
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.isdigit()) == ["4", "6"]
    state, meta = checkpoint.restore(manager, {"w": jnp.zeros((2,))})
    np.testing.assert_array_equal(state["w"], [6.0, 6.0])
    assert meta == {"step_seen": 6}
    older, _ = checkpoint.restore(manager, {"w": jnp.zeros((2,))}, step=4)
    np.testing.assert_array_equal(older["w"], [4.0, 4.0])
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint for step 2"):
        checkpoint.restore(manager, {"w": jnp.zeros((2,))}, step=2)
    # force saves off-interval (the final step of a run)
    assert checkpoint.save(manager, 7, {"w": jnp.full((2,), 7.0)}, {}, force=True)
    checkpoint.wait(manager)
    assert sorted(manager.all_steps()) == [6, 7]
    manager.close()


def test_preserved_step_outlives_the_last_k(tmp_path):
    """A step in `preserve` (the end of SFT, forced off-interval) stays while later steps rotate the last 2."""
    manager = checkpoint.make_manager(tmp_path, keep=2, every=4, preserve=[5])
    for s in range(1, 14):
        checkpoint.save(manager, s, {"w": jnp.full((2,), float(s))}, {}, force=s == 5)
    checkpoint.wait(manager)
    assert sorted(manager.all_steps()) == [5, 8, 12]
    kept, _ = checkpoint.restore(manager, {"w": jnp.zeros((2,))}, step=5)
    np.testing.assert_array_equal(kept["w"], [5.0, 5.0])
    manager.close()


def test_missing_or_empty_directory_gives_none(tmp_path):
    assert checkpoint.restore_latest(tmp_path / "nope", {"w": jnp.zeros(2)}) is None
    assert not (tmp_path / "nope").exists()
    assert checkpoint.restore_latest(tmp_path, {"w": jnp.zeros(2)}) is None
    manager = checkpoint.make_manager(tmp_path / "fresh", keep=1, every=1)
    assert checkpoint.restore(manager, {"w": jnp.zeros(2)}) is None
    manager.close()


def _saved(tmp_path):
    manager = checkpoint.make_manager(tmp_path, keep=3, every=1, async_save=False)
    checkpoint.save(manager, 5, {"w": jnp.arange(3.0)}, {"a": 1})
    manager.close()
    return tmp_path / "5"


# Orbax's failed read of corrupt data leaves work behind: a coroutine never awaited, or a callback that later finds
# its event loop closed ("Exception ignored" in a background thread). Collect it here, where it is expected, rather
# than as a stray warning in whichever test runs next.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("ignore:coroutine .* was never awaited:RuntimeWarning")
def test_corrupt_checkpoint_raises_clear_error(tmp_path):
    step_dir = _saved(tmp_path)
    for f in (step_dir / checkpoint.STATE).rglob("*"):
        if f.is_file() and f.name != "_METADATA":
            f.write_bytes(b"garbage")
    with pytest.raises(checkpoint.CheckpointError, match=r"step 5 from .*corrupt"):
        checkpoint.restore_latest(tmp_path, {"w": jnp.zeros(3)})
    time.sleep(0.5)
    gc.collect()


@pytest.mark.parametrize("item", [checkpoint.STATE, checkpoint.META])
def test_missing_item_raises_clear_error(tmp_path, item):
    shutil.rmtree(_saved(tmp_path) / item)
    with pytest.raises(checkpoint.CheckpointError, match=f"step 5 .*item '{item}' is missing"):
        checkpoint.restore_latest(tmp_path, {"w": jnp.zeros(3)})


def test_structure_mismatch_raises_clear_error(tmp_path):
    _saved(tmp_path)
    with pytest.raises(checkpoint.CheckpointError, match="different state structure"):
        checkpoint.restore_latest(tmp_path, {"w": jnp.zeros(3), "b": jnp.zeros(1)})


def test_meta_must_be_json(tmp_path):
    manager = checkpoint.make_manager(tmp_path, keep=1, every=1)
    with pytest.raises(ValueError, match="step 3 is not plain JSON"):
        checkpoint.save(manager, 3, {"w": jnp.zeros(2)}, {"bad": object()})
    with pytest.raises(ValueError, match="keep and every"):
        checkpoint.make_manager(tmp_path, keep=0, every=1)
    manager.close()


def test_partial_restore_reads_only_the_given_subtree(tmp_path):
    """partial=True: the target names part of the saved state (params, not the optimizer state, whose structure
    depends on the phase); restore_newest tries the steps it is given, in order."""
    state = _train_state(0)
    manager = checkpoint.make_manager(tmp_path, keep=3, every=1, async_save=False)
    checkpoint.save(manager, 1, state, META)
    checkpoint.save(manager, 2, {"params": state["params"], "other": jnp.zeros(5)}, {"step": 2})
    manager.close()
    with checkpoint.read_only_manager(tmp_path) as reader:
        target = {"params": jax.eval_shape(lambda: _train_state(1)["params"])}
        got, meta = checkpoint.restore(reader, target, 1, partial=True)
        _assert_same(got, {"params": state["params"]})
        assert meta == META
        step, got, meta = checkpoint.restore_newest(reader, lambda s: target, steps=[1], partial=True)
        assert step == 1 and meta == META
        skipped = []
        assert checkpoint.restore_newest(reader, lambda s: {"params": {"nope": jnp.zeros(2)}},
                                         lambda s, e: skipped.append(s), partial=True) is None
        assert skipped == [2, 1]
        with pytest.raises(checkpoint.CheckpointError, match=r"step 1 .* holds no \[.params.\]\[.nope.\]"):
            checkpoint.restore(reader, {"params": {"nope": jnp.zeros(2)}}, 1, partial=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1", "2"]
