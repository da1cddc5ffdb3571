"""The optimizer's learning-rate schedule, counted in training steps of several optimizer updates."""
import jax
import jax.numpy as jnp
import ml_collections
import pytest

from agent_rl import steps


def test_lr_schedule_values_in_training_steps():
    # warm-up over 2 steps of 4 updates, cosine decay to lr / 10 at step 10 (update 40)
    lr = steps.lr_schedule(1e-3, warmup=2, steps=10, updates_per_step=4)
    assert float(lr(0)) == 0.0
    assert float(lr(4)) == pytest.approx(5e-4, rel=1e-6)    # half-way through the warm-up
    assert float(lr(8)) == pytest.approx(1e-3, rel=1e-6)    # peak at the start of step 3
    assert float(lr(24)) == pytest.approx(1e-4 + 0.5 * 9e-4, rel=1e-6)  # half-way through the cosine
    assert float(lr(40)) == pytest.approx(1e-4, rel=1e-6)
    assert float(lr(400)) == pytest.approx(1e-4, rel=1e-6)
    one = steps.lr_schedule(1e-3, warmup=2, steps=10)  # one update a step: the same curve, 4x shorter
    for k in range(0, 44, 4):
        assert float(one(k // 4)) == pytest.approx(float(lr(k)), rel=1e-6, abs=1e-12)


def test_optimizer_updates_follow_the_schedule():
    # With a constant gradient Adam's bias-corrected step is lr * g / (|g| + eps): -lr for g = 1.
    lr = steps.lr_schedule(1e-2, warmup=1, steps=3, updates_per_step=2)
    tx = steps.make_optimizer(lr, weight_decay=0.0)
    params = {"w": jnp.zeros(3)}
    state = tx.init(params)
    update = jax.jit(tx.update)
    for k in range(8):
        u, state = update({"w": jnp.full(3, 0.1)}, state, params)  # norm 0.17: the clip leaves it alone
        assert float(u["w"][0]) == pytest.approx(-float(lr(k)), rel=1e-4, abs=1e-12), k
    assert float(lr(6)) == pytest.approx(1e-3, rel=1e-6)  # the last step (updates 6, 7) is at the floor


@pytest.mark.parametrize("mu,expected", [(1, 4), (2, 8)])
def test_grpo_updates_per_step(mu, expected):
    g = ml_collections.ConfigDict(dict(n_scenarios=16, group_size=8, minibatch_size=32, mu=mu))
    assert steps.grpo_updates_per_step(g) == expected
