"""Print a few scripted episodes as text: every turn decoded, policy and env turns marked, rewards and decisions.

    python launch/preview.py --split heldout --n 3 --seed 0 [--policy oracle] [--tokenizer builtin|byte]

The episodes run through the jitted env exactly as in training (token by token, scripted tokens in place of
sampled ones), so what is printed is what a model would see and write.
"""
from __future__ import annotations

import argparse

import jax
import numpy as np

from agent_rl import tokenizer as tk
from sandbox import compile as C
from sandbox import env, generate, rewards, scripted
from sandbox import types as T
from sandbox.catalogue import CATALOGUE

SHAPES = {  # byte tokens are ~4x as many as built-in tokens
    "byte": T.Shapes(prompt=1536, seg=320, script=400, text=256),
    "builtin": T.Shapes(prompt=768, seg=160, script=200, text=256),
}


def load_tokenizer(name: str):
    if name == "byte":
        return tk.ByteTokenizer()
    if name == "builtin":
        return tk.builtin_tokenizer()
    raise ValueError(f"--tokenizer must be 'byte' or 'builtin', got {name!r}")


def segments(toks: np.ndarray, mask: np.ndarray, pad_id: int) -> list[tuple[str, list[int]]]:
    """Split an episode's tokens into maximal runs of policy ("policy") or env ("env") tokens; pads dropped."""
    out: list[tuple[str, list[int]]] = []
    for t, m in zip(toks.tolist(), mask.tolist()):
        if not m and t == pad_id:
            continue
        who = "policy" if m else "env"
        if out and out[-1][0] == who:
            out[-1][1].append(t)
        else:
            out.append((who, [t]))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", default="heldout")
    ap.add_argument("--n", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--policy", default="oracle", choices=T.POLICIES)
    ap.add_argument("--tokenizer", default="builtin", choices=sorted(SHAPES))
    ap.add_argument("--yes_prob", type=float, default=0.5)
    args = ap.parse_args(argv)

    tok = load_tokenizer(args.tokenizer)
    specs = generate.generate(args.seed, args.split, args.n)
    sc = C.compile_specs(specs, tok, CATALOGUE, SHAPES[args.tokenizer])
    vocab = env.make_vocab(tok)
    params = T.EnvParams(check_yes_prob=args.yes_prob, max_turns=8, max_turn_tokens=SHAPES[args.tokenizer].script,
                         max_tokens=4 * SHAPES[args.tokenizer].prompt)
    policy = T.POLICIES.index(args.policy)

    @jax.jit
    def run(keys, sc):
        s, toks, mask = scripted.rollout_batch(keys, sc, vocab, policy, params, params.max_tokens)
        o = jax.vmap(env.outcome)(s, sc)
        total, comps = rewards.shaped_reward(o, sc)
        return o, toks, mask, rewards.paper_reward(o, sc), total, comps

    keys = jax.random.split(jax.random.key(args.seed), len(specs))
    o, toks, mask, paper, shaped, comps = jax.tree.map(np.asarray, run(keys, sc))
    for i, s in enumerate(specs):
        print("=" * 100)
        print(f"{s.id}  user={s.user_kind}  tool={s.tool_kind}  family={s.family}  policy={args.policy}")
        n = int(sc.prompt_len[i])
        print("--- [prompt]")
        print(tok.decode(np.asarray(sc.prompt[i, -n:]).tolist()))
        for who, ids in segments(toks[i], mask[i], tok.pad_id):
            print(f"--- [{who}]")
            print(tok.decode(ids))
        print("--- [result]")
        print(f"user_decision={T.DECISION_NAMES[o.user_decision[i]]}  tool_decision="
              f"{T.DECISION_NAMES[o.tool_decision[i]]}  eos={bool(o.eos[i])}  truncated={bool(o.truncated[i])}  "
              f"harmful_call={bool(o.harmful_call[i])}  refused_text={bool(o.refused_text[i])}  "
              f"tokens={int(o.n_tokens[i])}")
        parts = "  ".join(f"{k}={float(comps[k][i]):+.2f}" for k in rewards.COMPONENTS)
        print(f"paper={float(paper[i]):.0f}  shaped={float(shaped[i]):+.2f}  ({parts})")


if __name__ == "__main__":
    main()
