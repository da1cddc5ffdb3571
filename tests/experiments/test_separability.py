"""The lexical reference classifier: hand-computed naive Bayes scores and the CLI on real splits."""
import math

import pytest

from experiments import separability as sep


def test_scores_match_hand_computation():
    docs = [("steal the money", "malicious"), ("steal a car", "malicious"), ("pay the bill", "benign")]
    nb = sep.NaiveBayes(docs)
    # vocabulary {steal, the, money, a, car, pay, bill}; malicious n=2, benign n=1.
    p_m = {"steal": 3 / 4, "the": 2 / 4, "money": 2 / 4, "a": 2 / 4, "car": 2 / 4, "pay": 1 / 4, "bill": 1 / 4}
    p_b = {"steal": 1 / 3, "the": 2 / 3, "money": 1 / 3, "a": 1 / 3, "car": 1 / 3, "pay": 2 / 3, "bill": 2 / 3}
    present = {"steal", "bill"}  # "steal my bill": "my" is out of vocabulary and ignored

    def expected(p, prior):
        return math.log(prior) + sum(math.log(p[w]) if w in present else math.log(1 - p[w]) for w in p)

    s = nb.scores("Steal my bill!")
    assert s["malicious"] == pytest.approx(expected(p_m, 2 / 3))
    assert s["benign"] == pytest.approx(expected(p_b, 1 / 3))
    assert nb.predict("steal it") == "malicious" and nb.predict("pay the bill") == "benign"


def test_confusion_and_recall():
    nb = sep.NaiveBayes([("steal", "malicious"), ("pay", "benign")])
    conf = sep.confusion(nb, [("steal", "malicious"), ("pay", "malicious"), ("pay", "benign")])
    assert conf == {("malicious", "malicious"): 1, ("malicious", "benign"): 1, ("benign", "benign"): 1}
    assert sep.recall(conf, "malicious") == 0.5 and sep.recall(conf, "benign", "malicious") == 0.0
    assert math.isnan(sep.recall(conf, "sensitive"))


def test_cli_prints_both_splits(capsys):
    sep.main(["--n_train", "440", "--n_heldout", "110", "--n_iid", "110"])
    out = capsys.readouterr().out
    assert "iid (110 scenarios)" in out and "heldout (110 scenarios)" in out
    assert out.count("malicious recall") == 2
