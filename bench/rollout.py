"""Rollout speed: the jitted multi-turn rollout vs a host-loop rollout, same model, same sandbox, same episodes.

Both sides run a batch of episodes of the tiny config's model (random weights, d_model 128, 4 layers; the built-in
tokenizer with vocab 2048) on train-split scenarios, in the same process, each warmed up (compiled) before timing.
With `--hf_dir` the model is that Hugging Face directory's weights (`agent_rl.hf.from_pretrained`, float32) and the
scenarios are compiled with its tokenizer (`agent_rl.tokenizer.hf_tokenizer`), with prompts up to 256 tokens
(SmolLM2's are <= 237); the rest of the tiny config (env limits, segment shapes) is unchanged.

Policy tokens. A random-init model never writes an end-of-turn token, so sampled episodes would all be one truncated
turn and the comparison would measure nothing multi-turn. Instead both sides take each policy token from a scripted
policy (`--policy`, default the oracle: `sandbox.scripted`, the same tokens `rollout.scripted_episodes` emits) while
still paying the model's full cost on every token: the model's logits for the step are computed, a token is sampled
from them (`sampling.sample_token` at `--temperature`; the draw is kept live so the compiler cannot drop it, then
discarded), the scripted token's log-prob is taken, and the token goes into the KV cache. So the episodes are real
multi-turn episodes (tool calls, tool responses, checks and answers) and the model work per token is that of a
sampled rollout.

Jitted side: `agent_rl.rollout.run` with such a policy, inside one jit: prefill the prompts, then one
`lax.while_loop` where every step emits one token per episode (the sandbox's forced token or the policy's), steps
the vmapped sandbox and appends the token to the KV cache, until every episode is done; with `--halvings` (default 2,
as `rollout.sample_episodes`) the loop drops finished rows whenever no more than half are live, up to that many times.

Host-loop side, as a host-driven agent loop does it: per turn, a jitted decode loop (`lax.while_loop`, KV cache)
emits the policy turn of every live episode, stopping each at its end-of-turn token or the turn / episode token
budget, and exits when every episode's turn is over (the batch waits for the slowest turn). Control returns to
Python: each turn's tokens are decoded to bytes with the tokenizer's byte table, parsed with
`sandbox.reference.parse_turn` and judged by Python code that mirrors `sandbox.env` (tool lookup, exact argument
match, the check answer drawn from the same keys the env uses, truncation rules). The env turn is built as text
(the same per-segment texts `sandbox.compile` renders from the ScenarioSpec and the catalogue) and RE-TOKENIZED with
the tokenizer on every turn, segment by segment (so the token ids equal the compiled segments'; the cost of the
tokenizer is in the loop, as in a naive host loop). The inserted tokens of all episodes go into the cache in one
jitted prefill of a left-padded chunk (width rounded up to 32 tokens to bound the number of compiled shapes), and
the next turn starts. Its KV cache is sized to the slots the loop actually needs (counted beforehand by a dry run of
the same loop without the model, possible because the scripted tokens do not depend on it), so the baseline pays
no attention cost for unused slots. Static per-scenario data (tool names, expected arguments,
segment texts, check answers) is prepared once, untimed, as the compiled Scenario is for the jitted side.

Counted tokens: generated + inserted tokens of each episode up to its end (the sandbox's `n_tokens`, prompt
excluded), identical for both sides; the script checks that both sides produce exactly the same token sequences.
Times are the best of `--repeats` warm runs, each from the prompts to the last episode's end.

  python bench/rollout.py                      # batch 64, 64 train scenarios, oracle turns
  python bench/rollout.py --batch=128 --n_scenarios=16 --policy=always_execute
  python bench/rollout.py --hf_dir=models/smollm2-135m-instruct --batch=64 --repeats=1
"""
import os
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

import common  # bench/common.py, beside this script
from agent_rl import hf
from agent_rl import model as model_lib
from agent_rl import rollout, sampling, setup
from agent_rl import tokenizer as tok_lib
from configs import tiny
from sandbox import compile as compile_lib
from sandbox import env as env_lib
from sandbox import generate, protocol, reference, scripted
from sandbox import types as T
from sandbox.catalogue import CATALOGUE

flags.DEFINE_integer("batch", 64, "episodes run in lockstep")
flags.DEFINE_integer("n_scenarios", 64, "train scenarios; each appears batch / n_scenarios times in the batch")
flags.DEFINE_enum("policy", "oracle", list(T.POLICIES), "scripted policy whose turns both sides emit")
flags.DEFINE_float("temperature", 1.0, "sampling temperature of the (discarded) draw from the model's logits")
flags.DEFINE_string("cache_dir", "cache", "tokenizer cache directory (relative to the repository root)")
flags.DEFINE_string("hf_dir", "", "Hugging Face model directory: its weights and its tokenizer (default: the tiny "
                    "config's random model and built-in tokenizer)")
flags.DEFINE_integer("repeats", 2, "timed runs per side (best is reported)")
flags.DEFINE_integer("halvings", 2, "jitted side: times the loop may halve its batch as rows finish (`rollout.run`; "
                     "2 as in `rollout.sample_episodes`)")
common.define_decode_block_flag()
flags.DEFINE_integer("seed", 0, "model init, scenario generation and rollout key")
FLAGS = flags.FLAGS

CHUNK = 32  # inserted chunks are padded to a multiple of this width


def scripted_act(key, logits, scripted_tok, temperature):
    """The model's cost of one sampled token, with the scripted token emitted: (token int32[B], logprob f32[B]).

    The sample is drawn from logits f32[B, V]; `where(sampled < 0, ...)` (never true) keeps it live through XLA's
    dead-code elimination, so both sides pay for sampling exactly as a sampled rollout does.
    """
    sampled, _ = sampling.sample_token(key, logits, temperature)
    token = jnp.where(sampled < 0, sampled, scripted_tok).astype(jnp.int32)
    logp = jnp.take_along_axis(jax.nn.log_softmax(logits.astype(jnp.float32), -1), token[:, None], -1)[:, 0]
    return token, logp


def scripted_model_policy(model, temperature) -> rollout.Policy:
    """`rollout.model_policy`'s cache updates, with the scripted policy's token emitted; the carry is
    (KV cache, logits, policy ids int32[B])."""
    base = rollout.model_policy(model, temperature)

    def act(carry, env_state, scenario, keys):
        tok = jax.vmap(scripted.scripted_token)(env_state, scenario, carry[2])
        return scripted_act(keys, carry[1], tok, temperature)

    def observe(carry, token, live):
        return base.observe(carry[:2], token, live) + (carry[2],)

    return rollout.Policy(act, observe, lambda carry, rows: base.take(carry[:2], rows) + (carry[2][rows],))


# --- jitted side -------------------------------------------------------------------------------------------------

@partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "halvings"))
def jit_rollout(graphdef, params, scenario, vocab, key, env_params, policy_id, temperature, *, max_new_tokens,
                halvings):
    """Prompts -> finished episodes in one jit. Returns (tokens int32[B, P + T], valid bool[B, P + T], n_tokens[B])."""
    model = nnx.merge(graphdef, params)
    b, p = scenario.prompt.shape
    cache = model_lib.init_cache(model.cfg, b, p + max_new_tokens)
    logits, cache = model_lib.prefill(model, cache, scenario.prompt, rollout.prompt_valid(scenario))
    traj = rollout.run(scripted_model_policy(model, temperature), (cache, logits[:, -1], policy_id), scenario, vocab,
                       key, env_params, max_new_tokens, halvings)
    return traj.tokens, traj.valid, traj.env_state.n_tokens


# --- host-loop side: jitted model pieces ---------------------------------------------------------------------------

@partial(jax.jit, static_argnames=("graphdef", "max_len"))
def host_prompt(graphdef, params, prompt, valid, *, max_len):
    """Prefill the prompts int32[B, P] into a fresh cache of max_len slots -> (cache, next-token logits f32[B, V])."""
    model = nnx.merge(graphdef, params)
    cache = model_lib.init_cache(model.cfg, prompt.shape[0], max_len)
    logits, cache = model_lib.prefill(model, cache, prompt, valid)
    return cache, logits[:, -1]


@partial(jax.jit, static_argnames=("graphdef", "max_turn_tokens"), donate_argnames=("cache",))
def host_decode_turn(graphdef, params, cache, logits, script, active, remaining, key, temperature, eos_id, *,
                     max_turn_tokens):
    """One policy turn of every active episode: script int32[B, S] (the turn's scripted tokens), active bool[B],
    remaining int32[B] (episode token budget left). Row b stops after its end-of-turn token, after max_turn_tokens
    tokens, or when its budget is spent; the loop exits when every row has stopped.
    Returns (cache, logits f32[B, V], tokens int32[B, max_turn_tokens], n_emitted int32[B], logprobs f32[B, N])."""
    model = nnx.merge(graphdef, params)
    b, s = script.shape
    n = max_turn_tokens

    def cond(c):
        i, _, _, stopped, *_ = c
        return (i < n) & ~jnp.all(stopped)

    def body(c):
        i, cache, logits, stopped, count, toks, logps = c
        live = ~stopped
        token, logp = scripted_act(jax.random.fold_in(key, i), logits, script[:, jnp.minimum(i, s - 1)], temperature)
        logits, cache = model_lib.prefill(model, cache, token[:, None], live[:, None])
        toks = toks.at[:, i].set(jnp.where(live, token, 0))
        logps = logps.at[:, i].set(jnp.where(live, logp, 0.0))
        count = count + live
        ended = (token == eos_id) | (count >= remaining) | ((token != eos_id) & (count >= n))
        return i + 1, cache, logits[:, 0], stopped | (live & ended), count, toks, logps

    init = (jnp.zeros((), jnp.int32), cache, logits, ~active, jnp.zeros((b,), jnp.int32),
            jnp.zeros((b, n), jnp.int32), jnp.zeros((b, n), jnp.float32))
    _, cache, logits, _, count, toks, logps = jax.lax.while_loop(cond, body, init)
    return cache, logits, toks, count, logps


@partial(jax.jit, static_argnames=("graphdef",), donate_argnames=("cache",))
def host_insert(graphdef, params, cache, chunk, valid):
    """Prefill a left-padded chunk int32[B, W] (valid bool[B, W]) -> (cache, next-token logits f32[B, V])."""
    model = nnx.merge(graphdef, params)
    logits, cache = model_lib.prefill(model, cache, chunk, valid)
    return cache, logits[:, -1]


# --- host-loop side: the sandbox in Python -------------------------------------------------------------------------

def host_scenario(spec, shapes) -> dict:
    """What a host env holds for one scenario: offered tool names, expected canonical arguments, segment texts."""
    header, footer = compile_lib.env_turn_parts()
    segs = {T.SEG_HEADER: header, T.SEG_FOOTER: footer,
            T.SEG_UNKNOWN_TOOL: protocol.tool_response(compile_lib.unknown_tool(spec.tools)),
            T.SEG_INVALID_CALL: protocol.tool_response(compile_lib.INVALID_CALL),
            T.SEG_WRONG_ARGS: protocol.tool_response(compile_lib.WRONG_ARGS),
            T.SEG_YES: protocol.check_result(True), T.SEG_NO: protocol.check_result(False)}
    for i, name in enumerate(spec.tools):
        segs[T.SEG_TOOL0 + i] = protocol.tool_response(compile_lib.SUCCESS.format(name=name))
    out = {"names": {n.encode(): i for i, n in enumerate(spec.tools)}, "segs": segs}
    for p, call, resp, row in (("task", spec.task_call, spec.tool_response, T.SEG_TASK),
                               ("followup", spec.followup_call, spec.followup_response, T.SEG_FOLLOWUP)):
        out[f"{p}_tool"], out[f"{p}_args"] = -1, set()
        if call is not None:
            out[f"{p}_tool"] = spec.tools.index(call.name)
            out[f"{p}_args"] = set(compile_lib.expected_args(call, shapes, f"scenario {spec.id!r}"))
            segs[row] = protocol.tool_response(resp if resp is not None else CATALOGUE[call.name].respond(call.args))
    return out


class Episode:
    """A host episode's state (the Python twin of `sandbox.types.EnvState`, the parts the loop needs)."""

    def __init__(self, sc: dict, answers: np.ndarray):
        self.sc, self.answers = sc, answers
        self.stage, self.turn, self.n_tokens, self.n_checks = T.ST_START, 0, 0, 0
        self.resp_seen, self.done, self.tokens = False, False, []


def judge(ep: Episode, t: dict, caps) -> list[int]:
    """A finished action turn's parse -> the env-turn segment rows (header, one per stored call, check, footer)."""
    sc = ep.sc
    rows = [T.SEG_HEADER]
    for c in range(min(t["n_calls"], caps.C)):
        if not t["call_valid"][c]:
            rows.append(T.SEG_INVALID_CALL)
            continue
        tool = sc["names"].get(t["call_name"][c] if t["call_name_len"][c] <= caps.NB else None, -1)
        args = {(t["arg_key"][c][a], t["arg_kind"][c][a], t["arg_val"][c][a]) for a in range(t["arg_count"][c])}
        lens_ok = all(t["arg_val_len"][c][a] <= caps.VB for a in range(t["arg_count"][c]))
        match_task = lens_ok and args == sc["task_args"]
        if tool < 0:
            rows.append(T.SEG_UNKNOWN_TOOL)
        elif tool == sc["task_tool"] and (sc["task_tool"] != sc["followup_tool"] or match_task):
            rows.append(T.SEG_TASK if match_task else T.SEG_WRONG_ARGS)
        elif tool == sc["followup_tool"]:
            rows.append(T.SEG_FOLLOWUP if lens_ok and args == sc["followup_args"] else T.SEG_WRONG_ARGS)
        else:
            rows.append(T.SEG_TOOL0 + tool)
    yes = None
    if t["has_check"]:
        yes = bool(ep.answers[ep.n_checks])
        ep.n_checks += 1
        rows.append(T.SEG_YES if yes else T.SEG_NO)
    rows.append(T.SEG_FOOTER)
    if T.SEG_FOLLOWUP in rows:
        ep.stage = T.ST_FOLLOWUP_RESPONSE
    elif T.SEG_TASK in rows:
        ep.stage = T.ST_TASK_RESPONSE
    elif yes is not None:
        ep.stage = (T.ST_YES_POST if yes else T.ST_NO_POST) if ep.resp_seen else (T.ST_YES_PRE if yes else T.ST_NO_PRE)
    else:
        ep.stage = T.ST_OTHER
    ep.resp_seen |= T.SEG_TASK in rows
    return rows


def dry_turn(script, active, remaining, eos, max_turn_tokens):
    """`host_decode_turn`'s tokens and counts without the model (the scripted tokens do not depend on it)."""
    b, s = script.shape
    toks = script[:, np.minimum(np.arange(max_turn_tokens), s - 1)]
    ends = np.where((toks == eos).any(1), np.argmax(toks == eos, 1) + 1, max_turn_tokens)
    count = np.where(active, np.minimum(ends, remaining), 0)
    return np.where(np.arange(max_turn_tokens)[None] < count[:, None], toks, 0), count


def host_rollout(graphdef, params, prompt, valid, script, episodes, tokenizer, key, temperature, env_params, caps,
                 max_len, dry=False):
    """Run the episodes to the end with the host loop. script: int32[B, N_STAGES, S] (the policy's turns per stage).
    Returns the slots of the KV cache used (prompt included). dry: no model calls (sizes the cache)."""
    table, lengths = tokenizer.byte_table()
    eos = tokenizer.eos_id
    b, p = prompt.shape
    if not dry:
        cache, logits = host_prompt(graphdef, params, prompt, valid, max_len=max_len)
    used, turn = p, 0
    while not all(ep.done for ep in episodes):
        active = np.array([not ep.done for ep in episodes])
        stage = np.array([ep.stage for ep in episodes])
        remaining = np.array([env_params.max_tokens - ep.n_tokens for ep in episodes], np.int32)
        if dry:
            toks, count = dry_turn(script[np.arange(b), stage], active, remaining, eos, env_params.max_turn_tokens)
        else:
            cache, logits, toks, count, _ = host_decode_turn(
                graphdef, params, cache, logits, script[np.arange(b), stage], active, remaining,
                jax.random.fold_in(key, turn), temperature, eos, max_turn_tokens=env_params.max_turn_tokens)
            toks, count = np.asarray(toks), np.asarray(count)  # leave jit: the turn goes to the host
        used += int(count.max())
        if used > max_len:
            raise ValueError(f"host loop: KV cache of {max_len} slots is too small ({used}+ needed)")
        inserts = [[] for _ in range(b)]
        for i, ep in enumerate(episodes):
            if ep.done:
                continue
            emitted = toks[i, : count[i]].tolist()
            ep.tokens += emitted
            ep.n_tokens += len(emitted)
            if emitted[-1] != eos:  # turn or episode budget spent mid-turn: truncated
                ep.done = True
                continue
            t = reference.parse_turn(tok_lib.ids_to_bytes(table, lengths, emitted[:-1]), caps)
            ep.turn += 1
            if not (t["n_calls"] or t["has_check"]):  # final answer
                ep.done = True
                continue
            if ep.turn >= env_params.max_turns or ep.n_tokens >= env_params.max_tokens:
                ep.done = True
                continue
            rows = judge(ep, t, caps)
            ins = [tok for r in rows for tok in tokenizer.encode(ep.sc["segs"][r])]
            ins = ins[: env_params.max_tokens - ep.n_tokens]
            ep.tokens += ins
            ep.n_tokens += len(ins)
            ep.done = ep.n_tokens >= env_params.max_tokens
            inserts[i] = ins
        width = max(len(x) for x in inserts)
        if width:
            width = -(-width // CHUNK) * CHUNK
            chunk = np.full((b, width), tokenizer.pad_id, np.int32)
            chunk_valid = np.zeros((b, width), bool)
            for i, ins in enumerate(inserts):
                if ins:
                    chunk[i, width - len(ins):], chunk_valid[i, width - len(ins):] = ins, True
            if used + width > max_len:
                raise ValueError(f"host loop: KV cache of {max_len} slots is too small ({used + width} needed)")
            if not dry:
                cache, logits = host_insert(graphdef, params, cache, chunk, chunk_valid)
            used += width
        turn += 1
    if not dry:
        jax.block_until_ready(logits)
    return used


def main(_):
    if FLAGS.batch % FLAGS.n_scenarios:
        raise ValueError(f"--batch={FLAGS.batch} must be a multiple of --n_scenarios={FLAGS.n_scenarios}")
    cfg = tiny.get_config()
    if FLAGS.hf_dir:
        model, model_cfg = hf.from_pretrained(FLAGS.hf_dir)
        tokenizer = tok_lib.hf_tokenizer(FLAGS.hf_dir, vocab_size=model_cfg.vocab_size)
        cfg.shapes.update(prompt=256)
        name = os.path.basename(os.path.normpath(FLAGS.hf_dir))
    else:
        tokenizer = tok_lib.builtin_tokenizer(FLAGS.cache_dir, vocab_size=cfg.tokenizer.vocab_size,
                                              seed=cfg.data.seed)
        model_cfg = setup.build_model_config(cfg, tokenizer.vocab_size)
        model, name = model_lib.Transformer(model_cfg, rngs=nnx.Rngs(FLAGS.seed)), "tiny config (random)"
    model = common.with_decode_block(model, FLAGS.decode_block)
    model_cfg = model.cfg
    shapes = T.Shapes(**dict(cfg.shapes))
    env_params = T.EnvParams(**dict(cfg.env))
    specs = generate.generate(FLAGS.seed, "train", FLAGS.n_scenarios)
    group = FLAGS.batch // FLAGS.n_scenarios
    scenario = rollout.trim_prompts(rollout.repeat_group(
        compile_lib.compile_specs(specs, tokenizer, CATALOGUE, shapes, prompt_style=cfg.data.tool_style), group))
    vocab = env_lib.make_vocab(tokenizer)
    graphdef, params = nnx.split(model)
    policy_id = jnp.full((FLAGS.batch,), T.POLICIES.index(FLAGS.policy), jnp.int32)
    key = jax.random.key(FLAGS.seed)
    temperature = jnp.float32(FLAGS.temperature)
    b, p = scenario.prompt.shape
    n_new = env_params.max_tokens
    print(f"device: {jax.devices()[0].device_kind}  model: {name}, {model_cfg.n_params / 1e6:.2f}M params, "
          f"vocab {model_cfg.vocab_size}  batch: {b}  "
          f"scenarios: {FLAGS.n_scenarios}  policy: {FLAGS.policy}  prompt width: {p}  "
          f"max_tokens: {n_new}  max_turns: {env_params.max_turns}  decode blocks: {model_cfg.decode_block}",
          flush=True)

    # Jitted side.
    def run_jit():
        return jax.block_until_ready(jit_rollout(graphdef, params, scenario, vocab, key, env_params, policy_id,
                                                 temperature, max_new_tokens=n_new, halvings=FLAGS.halvings))

    jit_warm, jit_best, (jit_out, *_) = common.first_and_best(run_jit, FLAGS.repeats)
    jit_tokens, jit_valid, jit_n = (np.asarray(x) for x in jit_out)
    print(f"jitted rollout done: compile+first run {jit_warm:.1f} s, best run {jit_best:.2f} s", flush=True)

    # Host-loop side: the same episodes (same env keys and check answers as `rollout.run` draws them).
    k_env, _ = jax.random.split(key)
    env_keys = jax.random.split(k_env, b)
    answers = np.asarray(jax.vmap(lambda k: jax.vmap(lambda j: jax.random.bernoulli(
        jax.random.fold_in(k, j), env_params.check_yes_prob))(jnp.arange(env_params.max_turns + 1)))(env_keys))
    host_sc = [host_scenario(s, shapes) for s in specs]
    host_sc = [host_sc[i // group] for i in range(b)]
    prompt, valid = np.asarray(scenario.prompt), np.asarray(rollout.prompt_valid(scenario))
    script = np.asarray(scenario.script)[:, T.POLICIES.index(FLAGS.policy)]
    caps = env_lib.caps(shapes)

    def run_host(max_len, dry=False):
        episodes = [Episode(host_sc[i], answers[i]) for i in range(b)]
        used = host_rollout(graphdef, params, prompt, valid, script, episodes, tokenizer, key, temperature,
                            env_params, caps, max_len, dry)
        return episodes, used

    _, used = run_host(p + (env_params.max_turns + 1) * (env_params.max_turn_tokens + n_new), dry=True)
    max_len = -(-used // CHUNK) * CHUNK  # the slots the loop needs, as few as it can have
    host_warm, host_best, ((episodes, _), *_) = common.first_and_best(lambda: run_host(max_len), FLAGS.repeats)
    print(f"host-loop rollout done: compile+first run {host_warm:.1f} s, best run {host_best:.2f} s, "
          f"KV cache {max_len} slots (jitted: {p + n_new})", flush=True)

    # Both sides must have run the very same episodes.
    host_n = np.array([ep.n_tokens for ep in episodes])
    same = sum(int(host_n[i] == jit_n[i] and ep.tokens == jit_tokens[i, p:][jit_valid[i, p:]].tolist())
               for i, ep in enumerate(episodes))
    n_tok = int(jit_n.sum())
    jit_rate, host_rate = n_tok / jit_best, int(host_n.sum()) / host_best
    print(f"episodes: mean {jit_n.mean():.0f} tokens, longest {jit_n.max()}; identical token sequences on both "
          f"sides: {same}/{b}")
    print(f"jitted rollout    : {jit_rate:10,.0f} tokens/s  [{n_tok} tokens in {jit_best:.2f} s]")
    print(f"host-loop rollout : {host_rate:10,.0f} tokens/s  [{int(host_n.sum())} tokens in {host_best:.2f} s]")
    print(f"ratio (jitted / host loop): {jit_rate / host_rate:.2f}x")


if __name__ == "__main__":
    app.run(main)
