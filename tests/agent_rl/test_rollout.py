"""The jitted rollout: no host callbacks, and the loss mask is exactly the positions the policy wrote."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from agent_rl import grpo
from agent_rl import model as model_lib
from agent_rl import rollout, sampling
from agent_rl import tokenizer as tok_lib
from sandbox import catalogue, generate, scripted
from sandbox import compile as compile_lib
from sandbox import env as env_lib
from sandbox import types as T

SHAPES = T.Shapes(prompt=320, seg=160, script=160)
PARAMS = T.EnvParams(check_yes_prob=0.5, max_turns=6, max_turn_tokens=160, max_tokens=512)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tok = tok_lib.builtin_tokenizer(tmp_path_factory.mktemp("tok"), vocab_size=1024, num_scenarios=2000)
    specs = generate.generate(0, "train", 22)  # two scenarios of each of the 11 cells
    scen = compile_lib.compile_specs(specs, tok, catalogue.CATALOGUE, SHAPES)
    cfg = model_lib.tiny(vocab_size=tok.vocab_size, d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, head_dim=16,
                         mlp_dim=64)
    model = model_lib.Transformer(cfg, rngs=nnx.Rngs(0))
    return tok, specs, scen, env_lib.make_vocab(tok), model


def _runs(mask):
    """[(start, end, value)] maximal runs of a bool vector."""
    out, start = [], 0
    for i in range(1, len(mask) + 1):
        if i == len(mask) or mask[i] != mask[start]:
            out.append((start, i, bool(mask[start])))
            start = i
    return out


def test_rollout_has_no_host_callbacks(world):
    tok, specs, scen, vocab, model = world
    graphdef, params = nnx.split(model, nnx.Param)
    f = functools.partial(rollout.sample_episodes.__wrapped__, graphdef, max_new_tokens=16)
    jaxpr = str(jax.make_jaxpr(f)(params, scen, vocab, jax.random.key(0), PARAMS, 1.0))
    assert "while" in jaxpr  # the whole multi-turn loop is inside
    for name in ("callback", "io_callback", "pure_callback", "debug_callback", "outside_call"):
        assert name not in jaxpr


def test_mask_is_exactly_the_policy_turns(world):
    """Driven by the oracle through `rollout.run`: every masked run of tokens is one scripted turn (its text and
    end-of-turn token), every unmasked run between them is one env turn (header ... footer), and nothing after the
    end of the episode is valid or masked."""
    tok, specs, scen, vocab, _ = world
    n = len(specs)
    traj = rollout.scripted_episodes(jnp.full((n,), T.ORACLE, jnp.int32), scen, vocab, jax.random.key(1), PARAMS,
                                     max_new_tokens=PARAMS.max_tokens)
    p = SHAPES.prompt
    tokens, valid, mask = (np.asarray(x)[:, p:] for x in (traj.tokens, traj.valid, traj.policy_mask))
    seg, seg_len = np.asarray(scen.seg), np.asarray(scen.seg_len)
    for b, spec in enumerate(specs):
        texts = set(scripted.turns(spec)[T.ORACLE, s] for s in range(len(T.STAGES)) if (T.ORACLE, s) in
                    scripted.turns(spec))
        end = int(valid[b].sum())
        assert valid[b, :end].all() and not valid[b, end:].any(), "valid must be a prefix"
        assert not mask[b, end:].any() and (tokens[b, end:] == tok.pad_id).all()
        assert not bool(traj.env_state.truncated[b])
        runs = _runs(mask[b, :end])
        assert runs[0][2], "the policy speaks first"
        header = seg[b, T.SEG_HEADER, : seg_len[b, T.SEG_HEADER]].tolist()
        footer = seg[b, T.SEG_FOOTER, : seg_len[b, T.SEG_FOOTER]].tolist()
        for start, stop, by_policy in runs:
            ids = tokens[b, start:stop].tolist()
            if by_policy:
                assert ids[-1] == tok.eos_id and tok.eos_id not in ids[:-1]
                assert tok.decode(ids[:-1]) in texts
            else:
                assert ids[: len(header)] == header and ids[-len(footer):] == footer
        assert runs[-1][2], "the episode ends with a policy turn"


def test_model_rollout_logprobs_and_mask(world):
    """Greedy model rollout: each masked token is the argmax of a full recomputation at that position, its
    behaviour log-prob matches the recomputed one, and unmasked tokens are the env's or padding."""
    tok, specs, scen, vocab, model = world
    graphdef, params = nnx.split(model, nnx.Param)
    params_env = PARAMS._replace(max_turn_tokens=24, max_tokens=64)
    traj = rollout.sample_episodes(graphdef, params, scen, vocab, jax.random.key(2), params_env, 0.0,
                                   max_new_tokens=64)
    logits = model_lib.forward(model, traj.tokens, traj.valid)
    lp = np.asarray(grpo.token_logprobs(logits[:, :-1], traj.tokens[:, 1:]))
    greedy = np.asarray(jnp.argmax(logits[:, :-1], -1))
    tokens, mask, valid = np.asarray(traj.tokens), np.asarray(traj.policy_mask), np.asarray(traj.valid)
    assert mask.any()
    assert not (mask & ~valid).any()
    np.testing.assert_array_equal(tokens[:, 1:][mask[:, 1:]], greedy[mask[:, 1:]])
    np.testing.assert_allclose(np.asarray(traj.logprobs)[:, 1:][mask[:, 1:]], lp[mask[:, 1:]], atol=1e-4)
    assert (np.asarray(traj.logprobs)[~mask] == 0).all()
    # In the generated region every unmasked real token belongs to an env turn, which only follows an end of turn.
    p = SHAPES.prompt
    for b in range(tokens.shape[0]):
        for start, stop, by_policy in _runs(mask[b, p:] | ~valid[b, p:]):
            if not by_policy:
                assert start > 0 and tokens[b, p + start - 1] == tok.eos_id


def test_batch_sizes():
    assert rollout.batch_sizes(128, 2) == [128, 64, 32]
    assert rollout.batch_sizes(22, 3) == [22, 11]  # 11 does not halve
    assert rollout.batch_sizes(1, 2) == [1] and rollout.batch_sizes(64, 0) == [64]


def _assert_same_trajectory(a, b, logprob_atol=0.0):
    for name in ("tokens", "valid", "policy_mask"):
        np.testing.assert_array_equal(np.asarray(getattr(a, name)), np.asarray(getattr(b, name)), err_msg=name)
    np.testing.assert_allclose(np.asarray(a.logprobs), np.asarray(b.logprobs), atol=logprob_atol)
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a.env_state), jax.tree.leaves(b.env_state)):
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))


def test_halving_the_batch_changes_no_episode(world):
    """Dropping finished rows (halvings > 0) gives the same trajectories and final env states as stepping every row
    to the end: scripted episodes exactly, sampled model episodes token for token (each row has its own key)."""
    _, specs, scen, vocab, model = world
    n = len(specs)
    ids = jnp.asarray(np.arange(n) % len(T.POLICIES), jnp.int32)
    runs = [rollout.scripted_episodes(ids, scen, vocab, jax.random.key(3), PARAMS, max_new_tokens=PARAMS.max_tokens,
                                      halvings=h) for h in (0, 3)]
    lengths = np.asarray(runs[0].valid).sum(1)
    assert lengths.min() < lengths.max()
    _assert_same_trajectory(*runs)
    graphdef, params = nnx.split(model, nnx.Param)
    params_env = PARAMS._replace(max_turn_tokens=24, max_tokens=64)
    sampled = [rollout.sample_episodes(graphdef, params, scen, vocab, jax.random.key(4), params_env, 1.0,
                                       max_new_tokens=64, halvings=h) for h in (0, 2)]
    lengths = np.asarray(sampled[0].valid).sum(1)
    assert lengths.min() < lengths.max()  # rows end at different steps, so the halved run did drop rows
    _assert_same_trajectory(*sampled, logprob_atol=1e-5)


def test_prefilling_a_groups_prompt_once_changes_no_episode(world):
    """group_size > 1 prefills each group's prompt once and copies its cache to the group's rows: the same sampled
    episodes, token for token, as prefilling every row."""
    _, _, scen, vocab, model = world
    graphdef, params = nnx.split(model, nnx.Param)
    groups = rollout.repeat_group(jax.tree.map(lambda x: x[:3], scen), 4)
    params_env = PARAMS._replace(max_turn_tokens=24, max_tokens=64)
    sampled = [rollout.sample_episodes(graphdef, params, groups, vocab, jax.random.key(5), params_env, 1.0,
                                       max_new_tokens=64, group_size=g) for g in (1, 4)]
    tokens = np.asarray(sampled[0].tokens)
    assert not all((tokens[i] == tokens[i - i % 4]).all() for i in range(12))  # a group's samples differ
    _assert_same_trajectory(*sampled, logprob_atol=1e-5)


def test_per_row_keys_make_draws_independent_of_the_batch():
    """With one key per row, a row's draw is the same whatever rows share its batch."""
    logits = jax.random.normal(jax.random.key(0), (6, 50))
    keys = jax.random.split(jax.random.key(1), 6)
    whole = np.asarray(sampling.categorical(keys, logits))
    for rows in ([0], [5, 2], [3, 4, 1]):
        part = np.asarray(sampling.categorical(keys[np.array(rows)], logits[np.array(rows)]))
        np.testing.assert_array_equal(part, whole[rows])
    # One key for the batch still draws one uniform per row, as before.
    assert sampling.categorical(jax.random.key(1), logits).shape == (6,)


def test_repeat_group(world):
    _, _, scen, _, _ = world
    g = rollout.repeat_group(jax.tree.map(lambda x: x[:3], scen), 4)
    np.testing.assert_array_equal(np.asarray(g.index), np.repeat(np.arange(3), 4))


def test_trim_left_aligns_rows_and_keeps_every_valid_token():
    rng = np.random.default_rng(0)
    b, p, t = 6, 40, 50
    prompt_len = rng.integers(1, p + 1, b)
    ep_len = rng.integers(0, t + 1, b)
    cols = np.arange(p + t)[None, :]
    valid = (cols >= p - prompt_len[:, None]) & (cols < p + ep_len[:, None])
    tokens = rng.integers(1, 100, (b, p + t)).astype(np.int32)
    policy = valid & (cols >= p) & (rng.random((b, p + t)) < 0.5)
    logp = np.where(policy, -rng.random((b, p + t)), 0.0).astype(np.float32)
    traj = rollout.Trajectory(tokens, valid, policy, logp, None)
    out = rollout.trim(traj, multiple=8)
    n = prompt_len + ep_len
    assert out.tokens.shape[1] == -(-n.max() // 8) * 8
    for i in range(b):
        np.testing.assert_array_equal(out.valid[i], np.arange(out.tokens.shape[1]) < n[i])
        np.testing.assert_array_equal(out.tokens[i][out.valid[i]], tokens[i][valid[i]])
        np.testing.assert_array_equal(out.policy_mask[i][out.valid[i]], policy[i][valid[i]])
        np.testing.assert_array_equal(out.logprobs[i][out.valid[i]], logp[i][valid[i]])
        assert not out.policy_mask[i][~out.valid[i]].any()
