"""Orbax checkpoints of a training state pytree and a JSON metadata record.

A checkpoint at step `s` holds two items:
  state: any pytree of arrays (nnx params state, optax state, PRNG keys, ...), saved with
         `StandardSave`; typed PRNG keys are stored as their key data and re-wrapped on restore
         with the dtype (and so the PRNG implementation) of the restore target.
  meta:  a JSON object (data position, the run config as a dict, anything small), `JsonSave`.

Saving is asynchronous by default: `save` returns once the arrays are copied off the
accelerator and the write continues in the background. Call `wait(manager)` before reading a
checkpoint back or exiting. Only finished checkpoints are listed, so a run killed mid-write
resumes from the previous one.

Typical use:
    manager = make_manager(workdir / "checkpoints", keep=3, every=100)
    restored = restore(manager, train_state)            # None on a fresh run
    ...
    save(manager, step, train_state, {"data_position": i, "config": config.to_dict()})
    ...
    wait(manager)
"""
from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from agent_rl import distributed

STATE = "state"
META = "meta"


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be read into the given target."""


def make_manager(directory: str | os.PathLike, *, keep: int, every: int, preserve: Sequence[int] = (),
                 async_save: bool = True) -> ocp.CheckpointManager:
    """A manager that saves at steps divisible by `every` (others are skipped unless forced, or
    the job is being preempted) and keeps the last `keep` checkpoints, and also those of the steps in
    `preserve` (e.g. the end of a phase) once saved. Creates `directory`.
    """
    if keep < 1 or every < 1:
        raise ValueError(f"make_manager: keep and every must be >= 1, got keep={keep}, every={every}")
    cm = ocp.checkpoint_managers
    # Orbax's default policy also saves the first step it sees; we save only on the interval.
    policy = cm.AnySavePolicy([cm.FixedIntervalPolicy(every), cm.PreemptionCheckpointingPolicy()])
    options = ocp.CheckpointManagerOptions(
        preservation_policy=cm.AnyPreservationPolicy([cm.LatestN(keep), cm.CustomSteps(list(preserve))]),
        save_decision_policy=policy, enable_async_checkpointing=async_save, create=True)
    return ocp.CheckpointManager(os.path.abspath(directory), options=options, item_names=(STATE, META))


def _is_key(x: Any) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def save(manager: ocp.CheckpointManager, step: int, train_state: Any,
         meta: Mapping[str, Any] | None = None, *, force: bool = False) -> bool:
    """Start saving `train_state` and `meta` as step `step`.

    Steps that are not a multiple of the manager's interval are skipped unless `force`
    (use it for the final step). Returns whether a save started.
    """
    meta = dict(meta or {})
    try:
        json.dumps(meta, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"checkpoint meta for step {step} is not plain JSON: {e}") from e
    state = jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, train_state)
    return manager.save(int(step), force=force, args=ocp.args.Composite(
        **{STATE: ocp.args.StandardSave(state), META: ocp.args.JsonSave(meta)}))


def _abstract(x: Any) -> Any:
    if _is_key(x):
        return jax.eval_shape(jax.random.key_data, x)
    if isinstance(x, jax.ShapeDtypeStruct):
        return x
    return ocp.utils.to_shape_dtype_struct(jnp.asarray(x) if not isinstance(x, jax.Array) else x)


def restore(manager: ocp.CheckpointManager, target: Any, step: int | None = None, *,
            partial: bool = False) -> tuple[Any, dict[str, Any]] | None:
    """Restore step `step` (default: the latest) into the structure of `target`.

    Args:
      target: a pytree like the saved state, of arrays or `jax.ShapeDtypeStruct`s (e.g. from
        `jax.eval_shape` / `nnx.eval_shape`); restored arrays take their shapes, dtypes and
        shardings from it.
      partial: `target` holds only part of the saved state (e.g. {"params": ...} of a state that also
        holds optimizer state): only that part is read, the rest is left on disk. Orbax binds one
        handler per item to a manager, so a partial restore needs a manager that has not saved or
        fully restored a state (e.g. one from `read_only_manager`).
    Returns:
      (state, meta), or None when the directory holds no finished checkpoint.
    Raises:
      CheckpointError naming the directory and step when the checkpoint is unreadable or does
      not match `target`.
    """
    manager.wait_until_finished()
    if step is None:
        step = manager.latest_step()
        if step is None:
            return None
    elif step not in manager.all_steps():
        raise CheckpointError(f"no checkpoint for step {step} in {manager.directory} "
                              f"(have {sorted(manager.all_steps())})")
    # A missing item gets its own error, naming it, rather than orbax's message about a corrupt checkpoint.
    missing = [item for item in (STATE, META) if not (manager.directory / str(step) / item).exists()]
    if missing:
        raise CheckpointError(f"checkpoint step {step} in {manager.directory}: item '{missing[0]}' is missing")
    abstract = jax.tree.map(_abstract, target)
    if partial:
        state_args = ocp.args.PyTreeRestore(abstract, partial_restore=True,
                                            restore_args=ocp.checkpoint_utils.construct_restore_args(abstract))
    else:
        state_args = ocp.args.StandardRestore(abstract)
    try:
        restored = manager.restore(step, args=ocp.args.Composite(**{STATE: state_args, META: ocp.args.JsonRestore()}))
        state = jax.tree.map(
            lambda t, x: jax.random.wrap_key_data(x, dtype=t.dtype) if _is_key(t) else x,
            target, restored[STATE])
    except Exception as e:  # orbax raises many types; one clear error names the checkpoint
        raise CheckpointError(
            f"cannot restore checkpoint step {step} from {manager.directory} "
            f"(corrupt, or saved from a different state structure): {type(e).__name__}: {e}") from e
    # A partial restore hands back, unchanged, any target leaf the checkpoint does not hold.
    absent = [jax.tree_util.keystr(path) for path, x in jax.tree_util.tree_flatten_with_path(restored[STATE])[0]
              if isinstance(x, jax.ShapeDtypeStruct)]
    if absent:
        raise CheckpointError(f"checkpoint step {step} in {manager.directory} holds no {', '.join(absent[:3])}"
                              f"{f' (and {len(absent) - 3} more)' if len(absent) > 3 else ''}: saved from a "
                              f"different state structure")
    meta = restored[META]
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint step {step} in {manager.directory}: item '{META}' is missing")
    return state, meta


def restore_newest(manager: ocp.CheckpointManager, target_for: Callable[[int], Any],
                   on_skip: Callable[[int, CheckpointError], None] | None = None, *,
                   steps: Sequence[int] | None = None, partial: bool = False
                   ) -> tuple[int, Any, dict[str, Any]] | None:
    """(step, state, meta) of the newest checkpoint that reads, trying steps newest first; each unreadable one
    (truncated arrays, garbage metadata, a missing item) goes to `on_skip(step, error)` and is passed over.
    target_for(step): the restore target of that step (a run's state structure may differ between phases).
    steps: the steps to try, in that order (default: all the manager's, newest first). partial: as in `restore`.
    None when no checkpoint reads, or there is none."""
    manager.wait_until_finished()
    for step in sorted(manager.all_steps(), reverse=True) if steps is None else steps:
        try:
            state, meta = restore(manager, target_for(step), step, partial=partial)
        except CheckpointError as e:
            if on_skip is not None:
                on_skip(step, e)
            continue
        return step, state, meta
    return None


def set_aside(manager: ocp.CheckpointManager, step: int, error: Exception) -> None:
    """Move an unreadable checkpoint step to `<workdir>/checkpoints_unreadable/<step>` (kept for a post-mortem, not
    deleted), say so in one line, and reload the manager so later saves may reuse the step number. In a
    multi-process run every process calls this; process 0 moves the directory and the others wait for it."""
    if distributed.is_primary():
        directory = pathlib.Path(manager.directory)
        dest, n = directory.parent / "checkpoints_unreadable" / str(step), 1
        while dest.exists():  # the same step number may have been set aside before
            dest, n = dest.with_name(f"{step}.{n}"), n + 1
        dest.parent.mkdir(exist_ok=True)
        (directory / str(step)).rename(dest)
        print(f"warning: checkpoint step {step} is unreadable ({str(error).splitlines()[0][:300]}); moved to {dest}; "
              f"trying the previous one", flush=True)
    distributed.barrier(f"checkpoint_set_aside_{step}")
    manager.reload()


def read_only_manager(directory: str | os.PathLike) -> ocp.CheckpointManager:
    """A manager that reads the checkpoints in an existing `directory` and never writes to it (no saves, no
    pruning, no directory creation)."""
    options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0)
    return ocp.CheckpointManager(os.path.abspath(directory), options=options, item_names=(STATE, META))


def restore_latest(directory: str | os.PathLike,
                   target: Any) -> tuple[Any, int, dict[str, Any]] | None:
    """(state, step, meta) of the newest finished checkpoint in `directory`, or None if there is
    none (the directory is missing or empty). Never writes to `directory`."""
    if not os.path.isdir(directory):
        return None
    with read_only_manager(directory) as manager:
        step = manager.latest_step()
        restored = restore(manager, target, step) if step is not None else None
    if restored is None:
        return None
    return restored[0], step, restored[1]


def wait(manager: ocp.CheckpointManager) -> None:
    """Block until pending asynchronous saves are written; re-raises a failed save's error."""
    manager.wait_until_finished()
