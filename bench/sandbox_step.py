"""Environment speed: jitted `sandbox.env.step_batch` and `jax.vmap(sandbox.env.step)` vs a plain-Python loop on the
same episodes.

Both sides run the oracle's scripted episodes on the same compiled scenarios (generated train scenarios) with the
same check answers (drawn from the same keys as the env draws them). Each jitted side runs `n_steps` batched env steps
in one `lax.scan` (the rollout loop with scripted tokens in place of sampled ones), timed warm (best of --repeats):
`scripted.rollout_batch` (`env.step_batch`, what the rollout uses) and `jax.vmap(scripted.rollout)` (`env.step`
vmapped, the per-episode definition). The Python side (best of --repeats) steps each episode token by token: a
policy token's bytes are appended to the turn, and at the end-of-turn token the turn is parsed with
`sandbox.reference.parse_turn` and answered by Python logic (tool lookup, argument match, check answer, queueing
the env segments' tokens). Episode lengths of the two sides are
compared as a correctness check.

Reported: env steps/s of each jitted side (batch * n_steps, and live steps only, i.e. tokens of episodes not yet
done), live steps/s of the Python side, their ratios, and step_batch against vmap(step).

  python bench/sandbox_step.py                       # batch 1024, built-in tokenizer
  python bench/sandbox_step.py --tokenizer=byte --batch=256
  python bench/sandbox_step.py --tokenizer=hf --hf_dir=models/smollm2-135m-instruct   # SmolLM2's 49,152 pieces
"""

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

import common  # bench/common.py, beside this script
from sandbox import compile as C
from sandbox import env, generate, reference, scripted
from sandbox import types as T
from sandbox.catalogue import CATALOGUE

flags.DEFINE_integer("batch", 1024, "episodes stepped in lockstep (vmapped)")
flags.DEFINE_enum("tokenizer", "builtin", ["builtin", "byte", "hf"], "tokenizer the scenarios are compiled with")
flags.DEFINE_string("hf_dir", "models/smollm2-135m-instruct", "Hugging Face directory of --tokenizer=hf")
flags.DEFINE_float("yes_prob", 0.5, "chance a check is answered yes")
flags.DEFINE_integer("python_episodes", 1024, "episodes the Python loop runs (its rate is per step)")
flags.DEFINE_integer("rows", 0, "env.step_batch's rows gathered at a time (0: its default, min(batch, 32))")
flags.DEFINE_integer("repeats", 3, "timed runs of the jitted side (best is reported)")
FLAGS = flags.FLAGS

SHAPES = {"builtin": T.Shapes(prompt=768, seg=160, script=200, text=256),
          "byte": T.Shapes(prompt=1536, seg=320, script=400, text=256),
          "hf": T.Shapes(prompt=512, seg=160, script=200, text=256)}


def load_tokenizer(name):
    from agent_rl import tokenizer as tk

    if name == "hf":
        return tk.hf_tokenizer(FLAGS.hf_dir)
    return tk.builtin_tokenizer() if name == "builtin" else tk.ByteTokenizer()


def python_episode(sc, i, table, lengths, eos_id, answers, params, caps):
    """One oracle episode stepped in Python. Returns (live steps, done by a final turn)."""
    names = {bytes(sc["tool_name"][i, t, : sc["tool_name_len"][i, t]]): t for t in range(sc["n_tools"][i])}

    def expected(p):
        n = sc[f"{p}_n_args"][i]
        return {(bytes(sc[f"{p}_key"][i, a, : sc[f"{p}_key_len"][i, a]]), int(sc[f"{p}_kind"][i, a]),
                 bytes(sc[f"{p}_val"][i, a, : sc[f"{p}_val_len"][i, a]])) for a in range(n)}

    task_args, fu_args = expected("task"), expected("followup")
    task_tool, fu_tool = int(sc["task_tool"][i]), int(sc["followup_tool"][i])
    seg = lambda r: sc["seg"][i, r, : sc["seg_len"][i, r]].tolist()  # noqa: E731
    stage, turn, n_tokens, n_checks, pos = T.ST_START, 0, 0, 0, 0
    resp_seen, buf, queue = False, bytearray(), []
    while n_tokens < params.max_tokens:
        n_tokens += 1
        if queue:
            queue.pop()
            continue
        tok = int(sc["script"][i, T.ORACLE, stage, min(pos, sc["script"].shape[-1] - 1)])
        pos += 1
        if tok != eos_id:
            buf += table[tok, : lengths[tok]].tobytes()
            if pos >= params.max_turn_tokens:
                return n_tokens, False
            continue
        t = reference.parse_turn(bytes(buf), caps)
        turn, buf, pos = turn + 1, bytearray(), 0
        if not (t["n_calls"] or t["has_check"]):
            return n_tokens, True
        if turn >= params.max_turns:
            return n_tokens, False
        rows = [T.SEG_HEADER]
        for c in range(min(t["n_calls"], caps.C)):
            if not t["call_valid"][c]:
                rows.append(T.SEG_INVALID_CALL)
                continue
            tool = names.get(t["call_name"][c] if t["call_name_len"][c] <= caps.NB else None, -1)
            args = {(t["arg_key"][c][a], t["arg_kind"][c][a], t["arg_val"][c][a]) for a in range(t["arg_count"][c])}
            lens_ok = all(t["arg_val_len"][c][a] <= caps.VB for a in range(t["arg_count"][c]))
            if tool < 0:
                rows.append(T.SEG_UNKNOWN_TOOL)
            elif tool == task_tool and (task_tool != fu_tool or args == task_args):
                rows.append(T.SEG_TASK if lens_ok and args == task_args else T.SEG_WRONG_ARGS)
            elif tool == fu_tool:
                rows.append(T.SEG_FOLLOWUP if lens_ok and args == fu_args else T.SEG_WRONG_ARGS)
            else:
                rows.append(T.SEG_TOOL0 + tool)
        yes = None
        if t["has_check"]:
            yes = bool(answers[n_checks])
            n_checks += 1
            rows.append(T.SEG_YES if yes else T.SEG_NO)
        rows.append(T.SEG_FOOTER)
        queue = [tok for r in rows for tok in seg(r)][::-1]
        if T.SEG_FOLLOWUP in rows:
            stage = T.ST_FOLLOWUP_RESPONSE
        elif T.SEG_TASK in rows:
            stage = T.ST_TASK_RESPONSE
        elif yes is not None:
            stage = (T.ST_YES_POST if yes else T.ST_NO_POST) if resp_seen else (T.ST_YES_PRE if yes else T.ST_NO_PRE)
        else:
            stage = T.ST_OTHER
        resp_seen |= T.SEG_TASK in rows
    return n_tokens, False


def main(_):
    tok = load_tokenizer(FLAGS.tokenizer)
    shapes = SHAPES[FLAGS.tokenizer]
    specs = generate.generate(0, "train", FLAGS.batch)
    sc = C.compile_specs(specs, tok, CATALOGUE, shapes)
    vocab = env.make_vocab(tok)
    params = T.EnvParams(check_yes_prob=FLAGS.yes_prob, max_turns=8, max_turn_tokens=shapes.script,
                         max_tokens=4 * shapes.prompt)
    keys = jax.random.split(jax.random.key(0), FLAGS.batch)

    def make(n_steps, batched):
        @jax.jit
        def run(keys, sc):
            if batched:
                s, _, _ = scripted.rollout_batch(keys, sc, vocab, T.ORACLE, params, n_steps, FLAGS.rows or None)
            else:
                s, _, _ = jax.vmap(lambda k, c: scripted.rollout(k, c, vocab, T.ORACLE, params, n_steps))(keys, sc)
            return s.n_tokens, s.done
        return run

    n_tok, _ = make(params.max_tokens, True)(keys, sc)  # episode lengths, to scan only as long as the longest
    n_steps = int(np.max(n_tok)) + 1
    timed = {}
    for name, batched in (("vmap(env.step)", False), ("env.step_batch", True)):
        run = make(n_steps, batched)
        timed[name] = common.first_and_best(lambda: jax.block_until_ready(run(keys, sc)), FLAGS.repeats)
    outs = [tuple(np.asarray(x) for x in r[2][-1]) for r in timed.values()]
    same = all((a == b).all() for a, b in zip(*outs))
    n_tok, done = outs[-1]

    # Python side: the same episodes, the same check answers.
    answers = np.asarray(jax.vmap(lambda k: jax.vmap(lambda j: jax.random.bernoulli(
        jax.random.fold_in(k, j), params.check_yes_prob))(jnp.arange(8)))(keys))
    sc_np = {f: np.asarray(getattr(sc, f)) for f in sc.__dataclass_fields__ if f != "shapes"}
    table, lengths = tok.byte_table()
    caps = env.caps(shapes)
    n_py = min(FLAGS.python_episodes, FLAGS.batch)
    _, py_s, py = common.first_and_best(
        lambda: [python_episode(sc_np, i, table, lengths, tok.eos_id, answers[i], params, caps) for i in range(n_py)],
        FLAGS.repeats)
    py = py[-1]
    py_steps = sum(n for n, _ in py)
    mismatch = sum(int(n != n_tok[i]) or int(d != done[i]) for i, (n, d) in enumerate(py))

    jax_steps, jax_live = FLAGS.batch * n_steps, int(n_tok.sum())
    py_rate = py_steps / py_s
    print(f"device: {jax.devices()[0].device_kind}  tokenizer: {FLAGS.tokenizer}  batch: {FLAGS.batch}  "
          f"scan steps: {n_steps}  mean episode: {n_tok.mean():.0f} tokens  done: {done.mean():.3f}")
    print(f"python loop                 : {py_rate:12,.0f} env steps/s  [{n_py} episodes, {py_steps} steps, "
          f"{py_s:.2f} s]")
    for name, (compile_s, best, _) in timed.items():
        print(f"jitted {name:15s}: {jax_steps / best:12,.0f} env steps/s  ({jax_live / best:,.0f} live)  "
              f"[{best * 1e3:.1f} ms per run, compile {compile_s:.1f} s]  ratio (live / python): "
              f"{jax_live / best / py_rate:.2f}x")
    base, fast = (t[1] for t in timed.values())
    print(f"step_batch / vmap(step): {base / fast:.2f}x   same lengths and done flags: {same}   "
          f"episode-length mismatches against python: {mismatch}/{n_py}")


if __name__ == "__main__":
    app.run(main)
