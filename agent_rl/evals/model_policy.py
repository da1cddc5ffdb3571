"""JAX model policies for the evaluation suites: `checkpoint:PATH` (a training run), `hf:DIR` (local Hugging Face
weights) and `lora:DIR` (LoRA adapter files over the base model they name, `agent_rl.adapters`).

A `ModelPolicy` is a `policies.TextPolicy` (the text suites call `generate`: one greedy agent turn per prompt) and
also carries what the sandbox suite needs to run the model through the environment: the tokenizer, the split model
(graphdef, params) and the run config it was trained with (None for `hf:`).

`agent_rl.evals` registers the prefixes lazily, so importing the harness does not import the model code.
"""
from __future__ import annotations

import json
import pathlib
import sys
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from agent_rl import checkpoint as ckpt
from agent_rl import lora
from agent_rl import model as model_lib
from agent_rl import sampling
from agent_rl import setup as setup_lib
from agent_rl import tokenizer as tok_lib
from agent_rl.evals.policies import PolicyError


class ModelPolicy(NamedTuple):
    """A model and its tokenizer. generate: greedy, at most `max_new_tokens` per turn, `batch_size` prompts a call
    of the compiled generator (prompts are left-padded to a multiple of `pad_to` tokens: few compiled shapes)."""
    name: str
    tokenizer: Any
    graphdef: Any
    params: Any
    run_config: ml_collections.ConfigDict | None = None
    max_new_tokens: int = 256
    batch_size: int = 32
    pad_to: int = 64

    def generate(self, prompts: list[str]) -> list[str]:
        return generate_text(self, prompts)


def generate_text(policy: ModelPolicy, prompts: list[str], key: jax.Array | None = None,
                  temperature: float = 0.0) -> list[str]:
    """The next agent turn for each prompt (chat prefixes ending with the assistant header): the decoded tokens up
    to and including the end-of-turn token (or `max_new_tokens` of them)."""
    tok, bs = policy.tokenizer, policy.batch_size
    model = nnx.merge(policy.graphdef, policy.params)
    key = jax.random.key(0) if key is None else key
    encoded = [tok.encode(p) for p in prompts]
    outs: list[str] = []
    for start in range(0, len(encoded), bs):
        chunk = encoded[start:start + bs]
        width = -(-max(len(ids) for ids in chunk) // policy.pad_to) * policy.pad_to
        tokens = np.full((bs, width), tok.pad_id, np.int32)
        valid = np.zeros((bs, width), bool)
        for i in range(bs):  # rows past the chunk repeat its last prompt: one compiled batch size
            ids = chunk[min(i, len(chunk) - 1)]
            tokens[i, width - len(ids):], valid[i, width - len(ids):] = ids, True
        new, new_valid = sampling.generate(model, jnp.asarray(tokens), jnp.asarray(valid),
                                           jax.random.fold_in(key, start), policy.max_new_tokens, int(tok.eos_id),
                                           temperature)
        new, new_valid = np.asarray(new), np.asarray(new_valid)
        outs += [tok.decode(new[i][new_valid[i]].tolist()) for i in range(len(chunk))]
    return outs


# ---------------------------------------------------------------------------------------------------------------
# checkpoint:PATH


def split_step(path: str) -> tuple[str, int | None]:
    """`WORKDIR@STEP` -> (WORKDIR, STEP); a path without a numeric `@STEP` suffix -> (path, None)."""
    head, sep, step = path.rpartition("@")
    return (head, int(step)) if sep and step.isdigit() else (path, None)


def run_workdir(path: str) -> pathlib.Path:
    """The training workdir a `checkpoint:` argument names (`WORKDIR`, `WORKDIR@STEP` or its checkpoints/)."""
    return _checkpoint_dirs(split_step(path)[0])[0]


def _checkpoint_dirs(path: str) -> tuple[pathlib.Path, pathlib.Path]:
    """(run workdir, its checkpoints dir) from a workdir or a checkpoints dir."""
    p = pathlib.Path(path).expanduser()
    if not path or not p.is_dir():
        raise PolicyError(f"checkpoint: no such directory {p} (expected a training workdir or its checkpoints/)")
    if (p / "checkpoints").is_dir():
        return p, p / "checkpoints"
    return p.parent, p


def _tokenizer(cfg, where: str):
    if cfg.tokenizer.kind == "hf":
        tdir = pathlib.Path(cfg.tokenizer.path or cfg.model.hf_dir).expanduser()
        if not (tdir / "tokenizer.json").is_file() and not (tdir / "vocab.json").is_file():
            raise PolicyError(f"{where}: tokenizer directory {tdir} (config.tokenizer.path or model.hf_dir) is "
                              f"missing or holds no tokenizer.json")
    if cfg.model.hf_dir and not (pathlib.Path(cfg.model.hf_dir).expanduser() / "config.json").is_file():
        raise PolicyError(f"{where}: model directory {cfg.model.hf_dir} (config.model.hf_dir) has no config.json")
    return setup_lib.build_tokenizer(cfg, setup_lib.build_model_config(cfg).vocab_size if cfg.model.hf_dir else None)


def _why(error: ckpt.CheckpointError) -> str:
    """orbax's error behind a checkpoint error (else the error itself), in one short line."""
    e = error.__cause__ or error
    return f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"


def load_checkpoint(path: str, config: Any = None, lora_scale: float = 1.0) -> ModelPolicy:
    """The newest readable checkpoint of a training run (`PATH@STEP`: that step; an unreadable newer one is skipped
    with a one-line warning). Rebuilds tokenizer and model from the run's config
    (`<workdir>/config.json`, else the checkpoint's meta "config") and restores only the params from the saved
    state (whatever phase, and so optimizer structure, the step belongs to). `config` is not used: the run's own
    config is what the weights were trained with. A LoRA run's checkpoint holds its adapters: the base weights
    load from the run's model.hf_dir, and lora_scale multiplies the adapters. For a run that fine-tuned every
    weight, lora_scale scales the change from the weights it started from (its model.hf_dir, or its seed's
    initialisation): 0 gives those, 1 the checkpoint."""
    del config
    path, want = split_step(path)
    workdir, cdir = _checkpoint_dirs(path)
    with ckpt.read_only_manager(cdir) as manager:
        steps = sorted(manager.all_steps(), reverse=True)
        if not steps:
            raise PolicyError(f"checkpoint: no finished checkpoint in {cdir}")
        if want is not None and want not in steps:
            raise PolicyError(f"checkpoint: no step {want} in {cdir} (have {sorted(steps)})")
        cfg_path = workdir / "config.json"
        if cfg_path.is_file():
            cfg = ml_collections.ConfigDict(json.loads(cfg_path.read_text()))
        else:
            meta = manager.restore(steps[0], args=ocp.args.Composite(**{ckpt.META: ocp.args.JsonRestore()}))[ckpt.META]
            if not isinstance(meta, dict) or "config" not in meta:
                raise PolicyError(f"checkpoint: neither {cfg_path} nor a 'config' in the metadata of step {steps[0]} "
                                  f"in {cdir}")
            cfg = ml_collections.ConfigDict(meta["config"])
        tok = _tokenizer(cfg, f"checkpoint {cdir}")
        model_cfg = setup_lib.build_model_config(cfg, tok.vocab_size)
        abstract = nnx.eval_shape(lambda: model_lib.Transformer(model_cfg, rngs=nnx.Rngs(0)))
        graphdef, abs_params, _ = lora.split(abstract)
        target = {"params": jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), abs_params)}
        # The newest checkpoint that reads (or the step asked for): a corrupt newer one is skipped with a warning.
        # Only the params are read, whatever phase (and so optimizer structure) the step belongs to.
        tried, errors = [want] if want is not None else steps, []

        def skipped(step: int, error: ckpt.CheckpointError) -> None:
            errors.append(error)
            if step != tried[-1]:
                print(f"warning: checkpoint {cdir} step {step} is unreadable ({_why(error)}); trying the previous "
                      f"step", file=sys.stderr)

        restored = ckpt.restore_newest(manager, lambda step: target, skipped, steps=tried, partial=True)
    if restored is None:
        raise PolicyError(f"checkpoint {cdir} step {tried[-1]}: cannot restore params for the model its config "
                          f"describes ({_why(errors[-1])})") from errors[-1]
    params = restored[1]["params"]
    if model_cfg.lora_rank:  # the checkpoint holds the adapters; the frozen base is the run's hf_dir (or its seed)
        _, _, frozen = lora.split(setup_lib.build_model(cfg, model_cfg))
        params = lora.full_state(lora.scale(params, lora_scale), frozen)
    elif lora_scale != 1.0:  # full fine-tuning: scale the weights' change since the start of training
        _, start, _ = lora.split(setup_lib.build_model(cfg, model_cfg))
        params = lora.interpolate(start, params, lora_scale)
    return ModelPolicy(f"checkpoint:{path}", tok, graphdef, params, cfg,
                       max_new_tokens=int(cfg.env.max_turn_tokens), batch_size=int(cfg.eval.batch_size))


# ---------------------------------------------------------------------------------------------------------------
# hf:DIR


def load_hf(path: str, config: Any = None, lora_scale: float = 1.0) -> ModelPolicy:
    """Weights, config and tokenizer from one local Hugging Face directory. `config` (the --config run config, if
    any) sets the eval batch size, turn length and, for the sandbox suite, shapes and episode rules."""
    from agent_rl import hf

    d = pathlib.Path(path).expanduser()
    if not path or not d.is_dir():
        raise PolicyError(f"hf: no such directory {d}")
    _need_tokenizer(d, "hf:")
    if not (d / "config.json").is_file():
        raise PolicyError(f"hf: no config.json in {d}")
    if lora_scale != 1.0:
        raise PolicyError(f"hf:{path} has no LoRA adapters to scale (--lora_scale applies to checkpoint: and lora:)")
    model, model_cfg = hf.from_pretrained(d)
    tok = tok_lib.hf_tokenizer(d, vocab_size=model_cfg.vocab_size)
    graphdef, params = nnx.split(model, nnx.Param)
    return ModelPolicy(f"hf:{path}", tok, graphdef, params, None, **_sizes(config))


def _need_tokenizer(d: pathlib.Path, where: str) -> None:
    if not (d / "tokenizer.json").is_file() and not (d / "vocab.json").is_file():
        raise PolicyError(f"{where} no tokenizer in {d} (expected tokenizer.json)")


def _sizes(config) -> dict[str, int]:
    """ModelPolicy's turn length and batch size from a --config run config (its defaults without one)."""
    if config is None:
        return {}
    return dict(max_new_tokens=int(config.env.max_turn_tokens), batch_size=int(config.eval.batch_size))


# ---------------------------------------------------------------------------------------------------------------
# lora:DIR


def load_lora(path: str, config: Any = None, lora_scale: float = 1.0) -> ModelPolicy:
    """Adapter files (`agent_rl.adapters`: adapter_config.json + adapter_model.safetensors) over the base model
    directory their config names; the tokenizer is the base's. lora_scale multiplies the adapters (0: the base).
    `config` (the --config run config, if any) sets the eval batch size and turn length, as for `hf:`."""
    from agent_rl import adapters, hf

    d = pathlib.Path(path).expanduser()
    if not path or not d.is_dir():
        raise PolicyError(f"lora: no such directory {d}")
    try:
        adapter_config = adapters.read_config(d)
        base = adapters.base_dir(d, adapter_config)
        _need_tokenizer(base, f"lora:{path}: its base:")
        model, model_cfg = hf.from_pretrained(base)
        model = adapters.apply(model, d, adapter_config)
    except adapters.AdapterError as e:
        raise PolicyError(str(e)) from None
    tok = tok_lib.hf_tokenizer(base, vocab_size=model_cfg.vocab_size)
    graphdef, trainable, frozen = lora.split(model)
    params = lora.full_state(lora.scale(trainable, lora_scale), frozen)
    return ModelPolicy(f"lora:{path}", tok, graphdef, params, None, **_sizes(config))
