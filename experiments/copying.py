"""Does a policy copy? Its per-token loss on scripted demonstrations, by the kind of token: the library of the two
copy experiments, `experiments/probe_copy.py` (a checkpoint on scripted demonstrations) and
`experiments/synthetic_copy.py` (a fresh model on synthetic copy rows), which import it as `copying`.

An argument value such as an account id (`ACC-27291`) cannot be guessed: the policy must copy it from the request,
digit by digit. `token_classes` labels each policy token of a demonstration by where it sits (inside a
`<tool_call>` block or in other text) and what it is (a digit that starts a number, a digit that continues one,
anything else); `summarize` gives the count, mean and median negative log-likelihood of each class. A policy that
copies has a low loss on continuing digits; ln 10 = 2.30 nats is a uniform guess among the ten digits.

`copy_rows` makes synthetic copy data (`experiments/synthetic_copy.py` trains on it), to ask whether a model can learn
to copy at all within a budget: a random sequence repeated right after itself can be copied by attending a fixed
distance back, one repeated after random filler only by finding where the current token occurred before (an
induction head).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

CLASSES = ("call/first_digit", "call/next_digit", "call/other", "text/first_digit", "text/next_digit", "text/other")
NOT_SCORED = -1


def token_classes(pieces: Sequence[str], tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Class of every token: an index into `CLASSES` for the policy's tokens, `NOT_SCORED` elsewhere.

    pieces: [vocab] the text of each id (`tokenizer.decode([id])`); a digit token is one whose text is all ASCII
      digits. A `<tool_call>` block opens at the token whose text holds `<tool_call>` and closes after the token
      holding `</tool_call>` (both count as inside).
    tokens: int[B, S]; mask: bool[B, S], True on the policy's tokens. Returns int32[B, S].
    """
    tokens, mask = np.asarray(tokens), np.asarray(mask, bool)
    is_digit = np.array([bool(p) and all("0" <= c <= "9" for c in p) for p in pieces])
    opens = np.array(["<tool_call>" in p for p in pieces])
    closes = np.array(["</tool_call>" in p for p in pieces])
    digit = is_digit[tokens]
    after_digit = np.zeros_like(digit)
    after_digit[:, 1:] = digit[:, :-1]
    # inside: the last opening tag at or before t comes after the last closing tag before t
    col = np.arange(tokens.shape[1])
    last_open = np.maximum.accumulate(np.where(opens[tokens], col, -1), axis=1)
    last_close = np.maximum.accumulate(np.where(closes[tokens], col, -1), axis=1)
    inside = last_open > np.pad(last_close, ((0, 0), (1, 0)), constant_values=-1)[:, :-1]
    kind = np.where(digit, np.where(after_digit, 1, 0), 2)
    return np.where(mask, np.where(inside, kind, kind + 3), NOT_SCORED).astype(np.int32)


def summarize(nll: np.ndarray, classes: np.ndarray) -> dict[str, dict[str, float]]:
    """{class: {"n", "mean", "median"}} of the negative log-likelihoods nll f32[B, S] per class (`token_classes`);
    classes with no token have n 0 and nan statistics."""
    nll, classes = np.asarray(nll, np.float64), np.asarray(classes)
    out = {}
    for i, name in enumerate(CLASSES):
        x = nll[classes == i]
        out[name] = {"n": int(x.size), "mean": float(x.mean()) if x.size else float("nan"),
                     "median": float(np.median(x)) if x.size else float("nan")}
    return out


def copy_rows(rng: np.random.Generator, n: int, width: int, pool: int, gap: str) -> tuple[np.ndarray, ...]:
    """n rows of `width` tokens, left-padded, each `x filler x` with tokens drawn uniformly from [0, pool).

    gap "none": |x| = width // 2 and no filler, so the copy is always |x| tokens back; "random": |x| uniform in
    [4, width // 3] and filler of uniform length in [0, width - 2 |x|], so the distance varies from row to row.
    Returns (tokens int32[n, width], valid bool[n, width], mask bool[n, width]): the loss goes on the second x
    but its first token, which nothing predicts.
    """
    if gap not in ("none", "random"):
        raise ValueError(f"copy_rows: gap={gap!r}, expected 'none' or 'random'")
    if width < 12:
        raise ValueError(f"copy_rows: width={width} is below 12")
    tokens = np.zeros((n, width), np.int32)
    valid, mask = np.zeros((n, width), bool), np.zeros((n, width), bool)
    for i in range(n):
        length = width // 2 if gap == "none" else int(rng.integers(4, width // 3 + 1))
        filler = 0 if gap == "none" else int(rng.integers(0, width - 2 * length + 1))
        x = rng.integers(0, pool, size=length)
        row = np.concatenate([x, rng.integers(0, pool, size=filler), x])
        tokens[i, width - row.size:], valid[i, width - row.size:] = row, True
        mask[i, width - length + 1:] = True
    return tokens, valid, mask
