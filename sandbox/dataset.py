"""The scenario dataset as a TFDS builder, written as ArrayRecord so it reads with random access and no TensorFlow.

    from sandbox import dataset
    dataset.build("/data/tfds", seed=0)                   # writes sandbox_scenarios/seed0/1.0.0/*.array_record
    specs = dataset.load("/data/tfds", "heldout", seed=0)  # list[ScenarioSpec], equal to generate(0, "heldout")
    src = tfds.data_source("sandbox_scenarios/seed0", data_dir="/data/tfds", split="train")  # random access

One record per `ScenarioSpec`: strings, ints and a list of tool names; calls are JSON strings
(`{"name": ..., "arguments": {...}}` or `null`), optional texts are "" when absent (the generator never produces an
empty one). `index` is the scenario's position in `generate`'s list; TFDS shuffles records, so `load` sorts by it.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping

import numpy as np
import tensorflow_datasets as tfds

from sandbox import generate as gen
from sandbox.spec import SPLITS, Call, ScenarioSpec

NAME = "sandbox_scenarios"
_TEXT = ("id", "split", "domain", "family", "user_kind", "tool_kind", "user_prompt", "final_answer", "refusal")
_OPTIONAL_TEXT = ("tool_response", "followup_response", "injection_style")
_CALLS = ("task_call", "followup_call")


@dataclasses.dataclass
class ScenarioConfig(tfds.core.BuilderConfig):
    """Which scenarios a build holds: `generate(seed, split, n)` with n = n_train / n_heldout (None: default)."""
    seed: int = 0
    n_train: int | None = None
    n_heldout: int | None = None


def config(seed: int = 0, n_train: int | None = None, n_heldout: int | None = None) -> ScenarioConfig:
    """The config for a seed and sizes; its name (`seed0`, `seed0_n220_110`) names the directory it is built in."""
    sizes = "" if n_train is None and n_heldout is None else f"_n{n_train}_{n_heldout}"
    return ScenarioConfig(name=f"seed{seed}{sizes}", seed=seed, n_train=n_train, n_heldout=n_heldout,
                          description=f"generate(seed={seed}) with n_train={n_train}, n_heldout={n_heldout}")


def to_example(index: int, spec: ScenarioSpec) -> dict[str, Any]:
    """One spec as a TFDS example (plain Python values)."""
    ex: dict[str, Any] = {"index": index, "tools": list(spec.tools)}
    for k in _TEXT:
        ex[k] = getattr(spec, k)
    for k in _OPTIONAL_TEXT:
        v = getattr(spec, k)
        if v == "":
            raise ValueError(f"dataset: scenario {spec.id} field {k} is the empty string, which stores as None")
        ex[k] = "" if v is None else v
    for k in _CALLS:
        call = getattr(spec, k)
        ex[k] = "null" if call is None else call.json()
    return ex


def _text(v: Any) -> str:
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def from_example(ex: Mapping[str, Any]) -> ScenarioSpec:
    """Inverse of `to_example`, also for records as a TFDS data source returns them (bytes, numpy arrays)."""
    fields: dict[str, Any] = {k: _text(ex[k]) for k in _TEXT}
    fields["tools"] = tuple(_text(t) for t in ex["tools"])
    for k in _OPTIONAL_TEXT:
        fields[k] = _text(ex[k]) or None
    for k in _CALLS:
        d = json.loads(_text(ex[k]))
        fields[k] = None if d is None else Call.make(d["name"], d["arguments"])
    return ScenarioSpec(**fields)


class SandboxScenarios(tfds.core.GeneratorBasedBuilder):
    """Tri-modal threat scenarios: user prompt kind x tool response kind, with train and held-out splits."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIG_CLASS = ScenarioConfig
    BUILDER_CONFIGS = [config(0), config(0, 220, 110)]

    def _info(self) -> tfds.core.DatasetInfo:
        text = tfds.features.Text()
        features = {"index": tfds.features.Scalar(np.int64), "tools": tfds.features.Sequence(tfds.features.Text())}
        features.update({k: text for k in _TEXT + _OPTIONAL_TEXT + _CALLS})
        return tfds.core.DatasetInfo(
            builder=self, description=__doc__, features=tfds.features.FeaturesDict(features),
            homepage="https://arxiv.org/abs/2507.08270")

    def _split_generators(self, dl_manager):
        c = self.builder_config
        return {split: self._generate_examples(split, c.seed, c.n_train if split == "train" else c.n_heldout)
                for split in SPLITS}

    def _generate_examples(self, split: str, seed: int, n: int | None):
        for i, spec in enumerate(gen.generate(seed, split, n)):
            yield i, to_example(i, spec)


def builder(data_dir: str, seed: int = 0, n_train: int | None = None,
            n_heldout: int | None = None) -> SandboxScenarios:
    cfg = config(seed, n_train, n_heldout)
    known = {c.name for c in SandboxScenarios.BUILDER_CONFIGS}  # TFDS takes listed configs by name only
    return SandboxScenarios(data_dir=str(data_dir), config=cfg.name if cfg.name in known else cfg,
                            file_format="array_record")


def build(data_dir: str, seed: int = 0, n_train: int | None = None,
          n_heldout: int | None = None) -> SandboxScenarios:
    """Generate and write both splits under `data_dir` (a no-op when already built); returns the builder."""
    b = builder(data_dir, seed, n_train, n_heldout)
    b.download_and_prepare()
    return b


def load(data_dir: str, split: str, seed: int = 0, n_train: int | None = None,
         n_heldout: int | None = None) -> list[ScenarioSpec]:
    """The specs of one split of a built dataset, in generation order."""
    if split not in SPLITS:
        raise ValueError(f"dataset.load: unknown split {split!r} (expected one of {SPLITS})")
    b = builder(data_dir, seed, n_train, n_heldout)
    if not b.is_prepared():
        raise FileNotFoundError(f"dataset.load: no {NAME}/{b.builder_config.name} dataset under {data_dir}; "
                                f"run sandbox.dataset.build({str(data_dir)!r}, seed={seed}, ...) first")
    source = b.as_data_source(split=split)
    records = sorted((source[i] for i in range(len(source))), key=lambda r: int(r["index"]))
    if [int(r["index"]) for r in records] != list(range(len(records))):
        raise ValueError(f"dataset.load: {NAME}/{b.builder_config.name} split {split} has missing or repeated "
                         f"indices under {data_dir}; rebuild it")
    return [from_example(r) for r in records]
