"""Scripted policies through the jitted, vmapped env on generated scenarios of every cell."""
import jax
import numpy as np
import pytest

from sandbox import env, generate, metrics, protocol, rewards, scripted
from sandbox import types as T
from sandbox.types import Decision as D
from tests.sandbox import envkit as K

N_SPECS = 22  # two per cell (the generator cycles through its 11 cells)


@pytest.fixture(scope="module")
def world():
    specs = generate.generate(0, "train", N_SPECS) + generate.generate(0, "heldout", 11)
    return specs, K.compile_specs(specs)


@pytest.fixture(scope="module")
def runs(world):
    """{(policy, yes_prob): (outcome numpy, paper f32[B], shaped f32[B], components, toks, mask)}."""
    specs, sc = world
    run = K.scripted_rollout()
    keys = jax.random.split(jax.random.key(0), len(specs))
    out = {}
    for policy in range(len(T.POLICIES)):
        for yes in (0.0, 1.0):
            params = K.PARAMS._replace(check_yes_prob=yes)
            s, o, toks, mask = run(keys, sc, policy, params)
            total, comps = rewards.shaped_reward(o, sc)
            out[policy, yes] = (K.np_tree(o), np.asarray(rewards.paper_reward(o, sc)), np.asarray(total),
                                K.np_tree(comps), np.asarray(toks), np.asarray(mask))
    return out


def test_every_cell_is_covered(world):
    specs, sc = world
    cells = {(int(u), int(t)) for u, t in zip(sc.user_kind, sc.tool_kind)}
    assert len(cells) == 11


@pytest.mark.parametrize("yes", [0.0, 1.0])
def test_oracle_gets_the_maximum_everywhere(runs, yes):
    o, paper, shaped, comps, _, _ = runs[T.ORACLE, yes]
    _, hi = rewards.RewardWeights().bounds()
    assert np.all(o.eos) and not np.any(o.truncated) and np.all(o.think_ok)
    np.testing.assert_array_equal(paper, 1.0)
    np.testing.assert_allclose(shaped, hi, rtol=0, atol=1e-6)
    assert not np.any(o.harmful_call) and np.all(o.user_correct) and np.all(o.tool_correct)


def test_always_refuse_fails_benign_tasks(runs, world):
    specs, sc = world
    o, paper, *_ = runs[T.ALWAYS_REFUSE, 1.0]
    benign = np.asarray(sc.user_kind) == T.BENIGN
    np.testing.assert_array_equal(paper[benign], 0.0)
    malicious = np.asarray(sc.user_kind) == T.MALICIOUS
    np.testing.assert_array_equal(paper[malicious], 1.0)  # it does refuse harmful requests
    assert np.all(o.user_decision == D.REFUSED)


@pytest.mark.parametrize("yes", [0.0, 1.0])
def test_always_execute_follows_every_injection(runs, world, yes):
    specs, sc = world
    o, paper, *_ = runs[T.ALWAYS_EXECUTE, yes]
    mal_tool = np.asarray(sc.tool_kind) == T.MALICIOUS
    assert np.all(o.task_response_seen[mal_tool])
    assert np.all(o.tool_decision[mal_tool] == D.FOLLOWED_INJECTION)
    m = metrics.summarize(o, sc.user_kind, sc.tool_kind)
    assert m["injection_success"] == 1.0 and m["malicious_refusal"] == 0.0
    assert m["sensitive_verification"] == 0.0
    # capable: benign users with a benign tool get the paper's reward
    bb = (np.asarray(sc.user_kind) == T.BENIGN) & (np.asarray(sc.tool_kind) == T.BENIGN)
    np.testing.assert_array_equal(paper[bb], 1.0)


def test_always_check_verifies_but_over_verifies(runs, world):
    specs, sc = world
    o, paper, *_ = runs[T.ALWAYS_CHECK, 1.0]
    u, k = np.asarray(sc.user_kind), np.asarray(sc.tool_kind)
    has_tool = k != T.NO_TOOL
    assert np.all(o.user_decision[has_tool] == D.VERIFIED)
    np.testing.assert_array_equal(paper[(u == T.SENSITIVE)], 1.0)
    np.testing.assert_array_equal(paper[(u == T.BENIGN) & has_tool & (k != T.MALICIOUS)], 0.0)
    m = metrics.summarize(o, u, k)
    assert m["sensitive_verification"] == 1.0 and m["over_verification"] > 0.5


def test_policy_mask_marks_exactly_the_scripted_turns(runs, world):
    specs, sc = world
    o, _, _, _, toks, mask = runs[T.ORACLE, 1.0]
    b = next(i for i, s in enumerate(specs) if s.user_kind == "sensitive" and s.tool_kind == "malicious")
    policy_text = K.TOK.decode(toks[b][mask[b]].tolist())
    turns = scripted.turns(specs[b])
    expected = "".join(turns[T.ORACLE, st] + protocol.IM_END for st in
                       (T.ST_START, T.ST_YES_PRE, T.ST_TASK_RESPONSE, T.ST_YES_POST, T.ST_FOLLOWUP_RESPONSE))
    assert policy_text == expected
    env_text = K.TOK.decode(toks[b][~mask[b] & (toks[b] != K.TOK.pad_id)].tolist())
    assert env_text.count(protocol.RESULT_OPEN) == 2 and env_text.count(protocol.RESPONSE_OPEN) == 2


def test_scripted_turns_follow_the_protocol(world):
    from sandbox import reference

    specs, _ = world
    for s in specs:
        for (p, st), text in scripted.turns(s).items():
            t = reference.parse_turn(text.encode(), reference.Caps())
            assert t["think_ok"] and not t["malformed"], (s.id, p, st)
            assert all(t["call_valid"][: t["n_calls"]]), (s.id, p, st)
            assert t["n_calls"] + t["n_checks"] <= 1 and (t["n_calls"] + t["n_checks"] == 1 or t["has_text"])



def test_rollout_batch_equals_vmapped_rollout(runs, world):
    """`scripted.rollout_batch` (`env.step_batch`) gives every policy's tokens, mask and outcome of the vmapped
    per-episode `scripted.rollout`."""
    specs, sc = world
    keys = jax.random.split(jax.random.key(0), len(specs))

    @jax.jit
    def run(keys, sc, policy, params):
        s, toks, mask = scripted.rollout_batch(keys, sc, K.vocab(), policy, params, K.N_STEPS, rows=4)
        return jax.vmap(env.outcome)(s, sc), toks, mask

    for policy in range(len(T.POLICIES)):
        o, toks, mask = run(keys, sc, policy, K.PARAMS._replace(check_yes_prob=1.0))
        want_o, *_, want_toks, want_mask = runs[policy, 1.0]
        np.testing.assert_array_equal(np.asarray(toks), want_toks)
        np.testing.assert_array_equal(np.asarray(mask), want_mask)
        for a, b in zip(jax.tree.leaves(K.np_tree(o)), jax.tree.leaves(want_o)):
            np.testing.assert_array_equal(a, b)
