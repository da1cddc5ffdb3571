"""Sequence packing for SFT: a batch of demonstrations laid end to end in fewer, longer rows.

A batch padded to its longest demonstration carries 1.54x its real tokens in the default run (its first 16 SFT
batches, `bench/sft_packing.py`). Packing puts several demonstrations in one row; `model.forward_packed` keeps
them apart (each sees only its own earlier tokens, positions restart at 0), so every demonstration's logits are
those of its own row in `model.forward`, and the loss (a sum over masked tokens divided by their count) is
unchanged up to the reduction order.

    packed = pack(tokens, valid, mask, row_multiple=8)   # host side, numpy
    # packed.tokens / .segments / .mask: int32 / int32 / bool [R, W], R a multiple of row_multiple, W no wider
    # than the longest demonstration (rounded up to 32)
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Packed(NamedTuple):
    """tokens int32[R, W]; segments int32[R, W]: 0 on padding, k on the row's k-th sequence (k = 1, 2, ...);
    mask bool[R, W]: the loss mask, False on every sequence's first token (nothing in its sequence predicts it)."""
    tokens: np.ndarray
    segments: np.ndarray
    mask: np.ndarray


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def layout(lengths: np.ndarray, n_rows: int) -> list[list[int]]:
    """Longest-first greedy assignment of sequences to n_rows rows (each to the row with the fewest tokens so far):
    the rows' longest is at most 4/3 of the best possible (Graham's LPT bound). Returns each row's sequence indices,
    in assignment order. lengths: int[N]."""
    rows: list[list[int]] = [[] for _ in range(n_rows)]
    load = np.zeros(n_rows, np.int64)
    for i in np.argsort(-lengths, kind="stable"):
        r = int(np.argmin(load))
        rows[r].append(int(i))
        load[r] += lengths[i]
    return rows


def pack(tokens: np.ndarray, valid: np.ndarray, mask: np.ndarray, row_multiple: int, multiple: int = 32,
         max_width: int | None = None) -> Packed:
    """Pack left-aligned rows (`rollout.trim`'s output) into the fewest token slots.

    tokens int[B, S], valid bool[B, S] (each row's valid tokens one run from column 0), mask bool[B, S]. Tries every
    row count R that is a multiple of row_multiple (so the batch still splits into microbatches) up to B, lays the
    sequences out with `layout`, and keeps the R with the fewest slots R * W (W: the longest row, rounded up to
    `multiple`); ties go to more, shorter rows. max_width: no wider rows than this (None: the longest sequence,
    rounded up, so that no row's attention costs more than one per row; attention grows with the square of W and
    on a CPU it is most of a small model's step). Sequences of no valid token are dropped.
    """
    tokens, valid, mask = np.asarray(tokens), np.asarray(valid, bool), np.asarray(mask, bool)
    lengths = valid.sum(1)
    if np.any(valid & (np.arange(valid.shape[1]) >= lengths[:, None])):
        raise ValueError("pack: rows must be left-aligned (valid tokens one run from column 0; see rollout.trim)")
    keep = np.flatnonzero(lengths > 0)
    lengths = lengths[keep]
    b = tokens.shape[0]
    width = lambda n: max(multiple, _round_up(n, multiple))  # noqa: E731
    max_width = width(int(lengths.max(initial=0))) if max_width is None else max_width
    best = None
    for r in range(row_multiple, _round_up(b, row_multiple) + 1, row_multiple):
        rows = layout(lengths, r)
        w = width(max(int(lengths[row].sum()) for row in rows))
        if (w <= max_width or r >= b) and (best is None or r * w <= best[0] * best[1]):
            best = (r, w, rows)
    r, w, rows = best
    out_t = np.zeros((r, w), tokens.dtype)
    out_s = np.zeros((r, w), np.int32)
    out_m = np.zeros((r, w), bool)
    for row, seqs in enumerate(rows):
        at = 0
        for k, j in enumerate(seqs, start=1):
            i, n = keep[j], int(lengths[j])
            out_t[row, at:at + n] = tokens[i, :n]
            out_s[row, at:at + n] = k
            out_m[row, at + 1:at + n] = mask[i, 1:n]
            at += n
    return Packed(out_t, out_s, out_m)
