"""Token classes and per-class losses of the copying probe, on hand-made pieces and values."""
import math

import numpy as np

from agent_rl.evals import copying

PIECES = ["<tool_call>", "</tool_call>", "4", "2", "x", '"', "ab1", ""]
CALL, END, D4, D2, X, Q, AB1, EMPTY = range(8)
C = {name: i for i, name in enumerate(copying.CLASSES)}
NS = copying.NOT_SCORED


def test_token_classes_by_place_and_digit_run():
    tokens = np.array([[X, D4, D2, CALL, Q, D4, D2, X, END, D4],
                       [CALL, AB1, D2, EMPTY, D2, D4, END, D2, X, X]])
    mask = np.ones_like(tokens, bool)
    mask[0, 0] = False
    mask[1, 8:] = False
    want = np.array([
        [NS, C["text/first_digit"], C["text/next_digit"], C["call/other"], C["call/other"], C["call/first_digit"],
         C["call/next_digit"], C["call/other"], C["call/other"], C["text/first_digit"]],
        # "ab1" and the empty piece are not digits; the closing tag is inside its block
        [C["call/other"], C["call/other"], C["call/first_digit"], C["call/other"], C["call/first_digit"],
         C["call/next_digit"], C["call/other"], C["text/first_digit"], NS, NS]])
    np.testing.assert_array_equal(copying.token_classes(PIECES, tokens, mask), want)


def test_stray_close_tag_does_not_open_a_block():
    tokens = np.array([[END, D4, CALL, D4]])
    got = copying.token_classes(PIECES, tokens, np.ones_like(tokens, bool))
    np.testing.assert_array_equal(got, [[C["text/other"], C["text/first_digit"], C["call/other"],
                                         C["call/first_digit"]]])


def test_summarize_counts_means_and_medians():
    classes = np.array([[NS, C["call/next_digit"], C["call/next_digit"], C["call/next_digit"], C["text/other"]]])
    nll = np.array([[9.0, 1.0, 2.0, 6.0, 0.5]])
    out = copying.summarize(nll, classes)
    assert out["call/next_digit"] == {"n": 3, "mean": 3.0, "median": 2.0}
    assert out["text/other"] == {"n": 1, "mean": 0.5, "median": 0.5}
    assert out["call/first_digit"]["n"] == 0 and math.isnan(out["call/first_digit"]["mean"])
    assert sum(r["n"] for r in out.values()) == 4  # the unscored token counts nowhere
