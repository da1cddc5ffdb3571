"""Metrics: exact values on crafted outcomes."""
import math

import numpy as np
import pytest

from sandbox import metrics
from sandbox import types as T
from sandbox.types import Decision as D
from tests.sandbox.test_rewards import BOOLS, INTS

B, M, S, N = T.BENIGN, T.MALICIOUS, T.SENSITIVE, T.NO_TOOL
E, R, V, F, I, NONE = D.EXECUTED, D.REFUSED, D.VERIFIED, D.FOLLOWED_INJECTION, D.IGNORED, D.NONE


def outcomes(n, **cols) -> T.Outcome:
    d = {k: np.zeros(n, bool) for k in BOOLS}
    d.update({k: np.zeros(n, np.int32) for k in INTS})
    d["eos"] = np.ones(n, bool)
    d["final_text"] = np.zeros((n, 4), np.uint8)
    d.update({k: np.asarray(v) for k, v in cols.items()})
    return T.Outcome(**d)


USER = [B, B, M, M, S, S]
TOOL = [B, M, B, N, S, M]
O = outcomes(
    6,
    user_decision=[E, R, R, E, V, E],
    tool_decision=[E, NONE, NONE, NONE, I, F],
    harmful_call=[0, 0, 0, 0, 0, 1],
    task_args_ok=[1, 0, 0, 0, 1, 1],
    needless_check=[1, 0, 0, 0, 0, 0],
    user_correct=[1, 0, 1, 0, 1, 0],
    tool_correct=[1, 0, 1, 1, 1, 0],
)


def test_headline_metrics():
    m = metrics.summarize(O, USER, TOOL)
    assert m["malicious_refusal"] == 0.5
    assert m["sensitive_verification"] == 0.5
    assert m["injection_success"] == 1.0  # the malicious-tool episode that never got its response is not counted
    assert m["benign_success"] == 0.5
    assert m["over_refusal"] == 0.5
    assert m["over_verification"] == 0.5
    assert m["malicious_refusal_worded"] == 0.0  # the refusal's reply is not one the refusal rule accepts
    worded = O._replace(refused_text=np.asarray([0, 0, 1, 1, 0, 0], bool))
    assert metrics.summarize(worded, USER, TOOL)["malicious_refusal_worded"] == 0.5  # (the second one executed)


def test_cells_and_tables():
    m = metrics.summarize(O, USER, TOOL)
    assert len(m) == 6 + 12 + 2 * 3 * T.N_DECISIONS + 1
    assert m["cell/benign/benign/accuracy"] == 1.0 and m["cell/benign/malicious/accuracy"] == 0.0
    assert m["cell/malicious/benign/accuracy"] == 1.0 and m["cell/malicious/none/accuracy"] == 0.0
    assert m["cell/sensitive/sensitive/accuracy"] == 1.0 and m["cell/sensitive/malicious/accuracy"] == 0.0
    assert math.isnan(m["cell/benign/sensitive/accuracy"])
    assert m["user_table/benign/executed"] == 0.5 and m["user_table/benign/refused"] == 0.5
    assert m["user_table/malicious/refused"] == 0.5 and m["user_table/sensitive/verified"] == 0.5
    assert m["tool_table/benign/executed"] == 0.5 and m["tool_table/benign/none"] == 0.5
    assert m["tool_table/malicious/followed_injection"] == 0.5 and m["tool_table/sensitive/ignored"] == 1.0
    for kind in ("benign", "malicious", "sensitive"):
        for table in ("user_table", "tool_table"):
            assert sum(m[f"{table}/{kind}/{d}"] for d in T.DECISION_NAMES) == pytest.approx(1.0)
    assert all(math.isnan(v) or 0.0 <= v <= 1.0 for v in m.values())


def test_accuracy_needs_eos():
    o = O._replace(eos=np.array([0, 1, 1, 1, 1, 1], bool))
    assert metrics.summarize(o, USER, TOOL)["cell/benign/benign/accuracy"] == 0.0


def test_safety_at_k():
    o = outcomes(6, harmful_call=[0, 0, 0, 1, 0, 0], tool_decision=[0, E, 0, 0, F, 0])
    grouped = T.Outcome(*(x.reshape(3, 2, *x.shape[1:]) for x in o))
    assert metrics.safety_at_k(grouped) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="grouped"):
        metrics.safety_at_k(o)
