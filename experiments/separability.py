"""How far word statistics alone carry the user-kind decision from train prompts to other splits.

A Bernoulli naive Bayes classifier over the words of the user prompt (lower-cased, letters and apostrophes), fit
on train scenarios and applied to the iid split (the train generator's next scenarios: same families and tools,
unseen prompts) and to heldout (unseen tools and template families). It sees no tool list and no response, so it
is a reference for the user channel only: what a policy that learned the train prompts' vocabulary, and nothing
about meaning, could be expected to get on each split. Prints each split's confusion matrix and the recall of
every user kind (malicious recall ~ malicious_refusal, sensitive recall ~ sensitive_verification, benign
predicted malicious ~ over_refusal).

    python experiments/separability.py                   # 4096 train, 352 heldout, 352 iid (the default run's)
    python experiments/separability.py --n_train 22000
"""
from __future__ import annotations

import argparse
import collections
import math
import re
from typing import Iterable, Sequence

from sandbox import generate
from sandbox.spec import KINDS

WORD = re.compile(r"[a-z']+")


def words(text: str) -> frozenset[str]:
    return frozenset(WORD.findall(text.lower()))


class NaiveBayes:
    """Bernoulli naive Bayes with add-one smoothing: p(word present | kind) = (count + 1) / (n_kind + 2)."""

    def __init__(self, docs: Iterable[tuple[str, str]]):
        self.n = collections.Counter()
        self.present = collections.defaultdict(collections.Counter)
        for text, kind in docs:
            self.n[kind] += 1
            self.present[kind].update(words(text))
        self.kinds = sorted(self.n)
        self.vocab = frozenset().union(*(set(c) for c in self.present.values()))
        total = sum(self.n.values())
        # log p(kind) + sum over the vocabulary of log p(word absent | kind); a document then adds, per present
        # word, log p(present) - log p(absent).
        self.base = {k: math.log(self.n[k] / total) + sum(math.log(1 - self._p(k, w)) for w in self.vocab)
                     for k in self.kinds}

    def _p(self, kind: str, word: str) -> float:
        return (self.present[kind][word] + 1) / (self.n[kind] + 2)

    def scores(self, text: str) -> dict[str, float]:
        ws = words(text) & self.vocab
        return {k: self.base[k] + sum(math.log(self._p(k, w)) - math.log(1 - self._p(k, w)) for w in ws)
                for k in self.kinds}

    def predict(self, text: str) -> str:
        s = self.scores(text)
        return max(self.kinds, key=lambda k: (s[k], k))


def confusion(model: NaiveBayes, docs: Sequence[tuple[str, str]]) -> dict[tuple[str, str], int]:
    """(true kind, predicted kind) -> count."""
    return dict(collections.Counter((kind, model.predict(text)) for text, kind in docs))


def recall(conf: dict[tuple[str, str], int], kind: str, predicted: str | None = None) -> float:
    """Share of `kind` documents predicted `predicted` (default: `kind` itself)."""
    n = sum(v for (t, _), v in conf.items() if t == kind)
    return conf.get((kind, predicted or kind), 0) / n if n else float("nan")


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n_train", type=int, default=4096)
    ap.add_argument("--n_heldout", type=int, default=352)
    ap.add_argument("--n_iid", type=int, default=352)
    args = ap.parse_args(argv)
    train_all = generate.generate(args.seed, "train", args.n_train + args.n_iid)
    splits = {"iid": train_all[args.n_train:],
              "heldout": generate.generate(args.seed, "heldout", args.n_heldout)}
    model = NaiveBayes((s.user_prompt, s.user_kind) for s in train_all[:args.n_train])
    for name, specs in splits.items():
        conf = confusion(model, [(s.user_prompt, s.user_kind) for s in specs])
        print(f"{name} ({len(specs)} scenarios): rows true kind, columns predicted")
        print(" " * 12 + "".join(f"{k:>11}" for k in KINDS))
        for t in KINDS:
            print(f"  {t:<10}" + "".join(f"{conf.get((t, p), 0):>11}" for p in KINDS))
        print(f"  malicious recall {recall(conf, 'malicious'):.3f}  sensitive recall {recall(conf, 'sensitive'):.3f}  "
              f"benign recall {recall(conf, 'benign'):.3f}  benign predicted malicious "
              f"{recall(conf, 'benign', 'malicious'):.3f}")


if __name__ == "__main__":
    main()
