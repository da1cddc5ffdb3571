"""Multi-process (multi-host) runs on JAX's multi-controller runtime.

Every process runs the same program on its own devices; `jax.distributed.initialize` joins them, after which
`jax.devices()` lists every process's devices and a mesh over them spans the cluster:

    python launch/train.py --coordinator_address=10.0.0.1:8476 --num_processes=2 --process_id=0   # on host 0
    python launch/train.py --coordinator_address=10.0.0.1:8476 --num_processes=2 --process_id=1   # on host 1

On a TPU pod, under SLURM with more than one task, or under Open MPI the flags may be left out: JAX's own cluster
detection supplies them. Without the flags and outside such a cluster nothing is initialized (a one-process run).

What holds once initialized:
  - An array on the global mesh is global: each process holds only its devices' shards. `put` and `put_rows` make
    one from a value every process has (each process transfers only the slices its devices hold; a batch's rows are
    one contiguous share per process), `host` gathers one back to numpy on every process for host-side work.
  - Every process computes the same thing (the same seeds, the same data positions), so values pulled to the host
    (metrics, losses, the rewards' decisions) agree across processes without being sent.
  - Process 0 (`is_primary`) prints and writes the run's files; the other processes' stdout is discarded (stderr,
    with errors, is kept). Checkpoints are written and read by every process (Orbax coordinates them).
  - A process missing at start stops the others with one `error:` line after `timeout_s`; a process that dies later
    stops the others through JAX's heartbeat (its message names the dead task) within `heartbeat_s`.

In a one-process run every function here is the plain single-process operation, so its results are unchanged.
"""
from __future__ import annotations

import os
import sys
import threading
import warnings
from typing import Any

import jax
import numpy as np
from absl import flags
from jax.experimental import multihost_utils

EXIT_ERROR = 2  # agent_rl.cli's exit status for the project's errors


class DistributedError(RuntimeError):
    """A multi-process run that cannot start, or whose processes disagree; the message says which and why."""


def define_flags() -> None:
    """The flags of a multi-process run, shared by launch/train.py and launch/eval.py (cluster launchers pass them)."""
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0, where the coordinator listens (any free "
                        "port): a multi-process run with --num_processes and --process_id. Default: detected on a "
                        "TPU pod, SLURM (more than one task) or Open MPI; elsewhere a one-process run")
    flags.DEFINE_integer("num_processes", None, "processes in the run (one per host, usually)", lower_bound=1)
    flags.DEFINE_integer("process_id", None, "this process's index: 0 .. num_processes - 1", lower_bound=0)
    flags.DEFINE_integer("distributed_timeout", 300, "seconds to wait for every process of a multi-process run to "
                         "connect before stopping with an error", lower_bound=1)


def initialize_from_flags() -> bool:
    """`initialize` with the values of `define_flags`' flags."""
    f = flags.FLAGS
    return initialize(f.coordinator_address, f.num_processes, f.process_id, timeout_s=f.distributed_timeout)


def detected_cluster() -> str | None:
    """The cluster environment JAX's auto-detection would use (a TPU pod, SLURM, Open MPI, ...) when it has more than
    one process; None on a single machine, or a cluster of one process."""
    from jax._src import clusters  # JAX's own detectors, the ones jax.distributed.initialize() asks (jax is pinned)

    with warnings.catch_warnings():  # e.g. Kubernetes without its client package: not a cluster we could join
        warnings.simplefilter("ignore")
        for env in clusters.ClusterEnv._cluster_types:
            if not env.opt_in_only_method and env.is_env_present():  # the first present one, as initialize() picks
                return env.__name__ if env.get_process_count() > 1 else None
    return None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, timeout_s: int = 300, heartbeat_s: int = 100) -> bool:
    """Join a multi-process run before any JAX computation: with any of the three arguments given (a bare cluster;
    JAX detects the others where it can), or when `detected_cluster()` finds one. Returns whether it initialized.

    Every process must connect within `timeout_s`, or this one prints one `error:` line and exits with status 2
    (JAX would otherwise abort with a stack trace). Later, a process silent for `heartbeat_s` (dead) stops the
    others. Raises DistributedError for arguments JAX refuses.
    """
    explicit = any(v is not None for v in (coordinator_address, num_processes, process_id))
    cluster = None if explicit else detected_cluster()
    if not explicit and cluster is None:
        return False
    where = f"the coordinator at {coordinator_address}" if coordinator_address else "the cluster's coordinator"
    who = f"process {process_id} of {num_processes}" if None not in (process_id, num_processes) else "this process"
    connected = threading.Event()

    def watchdog():  # the C++ client blocks with the GIL released; its own timeout (later) aborts with a trace
        if not connected.wait(timeout_s):
            print(f"error: distributed: {who}: not every process connected to {where} within {timeout_s} s "
                  f"(a process missing or dead, or a wrong address or port); raise --distributed_timeout if "
                  f"processes start slowly", file=sys.stderr, flush=True)
            os._exit(EXIT_ERROR)

    threading.Thread(target=watchdog, name="distributed-watchdog", daemon=True).start()
    try:
        jax.distributed.initialize(coordinator_address, num_processes, process_id,
                                   initialization_timeout=timeout_s + 60, heartbeat_timeout_seconds=heartbeat_s,
                                   shutdown_timeout_seconds=heartbeat_s)
        n_devices = jax.device_count()  # the backend exchanges every process's devices: part of connecting
    except (ValueError, TypeError, RuntimeError) as e:
        raise DistributedError(f"distributed: {who}: {str(e).strip().splitlines()[0]} (pass --coordinator_address, "
                               f"--num_processes and --process_id together, or run in a TPU pod, SLURM or Open MPI "
                               f"job)") from e
    finally:
        connected.set()
    if not is_primary():  # process 0 prints for the run: the others' stdout (Python's and native code's) is dropped
        sys.stdout.flush()
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    print(f"distributed: {jax.process_count()} processes{f' ({cluster})' if cluster else ''}, {n_devices} devices, "
          f"{jax.local_device_count()} per process", flush=True)
    return True


def is_primary() -> bool:
    """Whether this is process 0, the one that prints and writes the run's files (True in a one-process run)."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Wait until every process reaches the barrier `name` (a no-op in a one-process run)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def agree(value: int, what: str) -> int:
    """`value` when every process has the same; else DistributedError naming `what` and each process's value."""
    if jax.process_count() == 1:
        return value
    values = multihost_utils.process_allgather(np.asarray(value, np.int64)).tolist()
    if len(set(values)) > 1:
        raise DistributedError(f"distributed: the processes disagree on {what}: {values} (process 0, 1, ...); every "
                               f"process must see the same files (checkpoints on storage they share)")
    return value


def put(x: Any, sharding: jax.sharding.Sharding) -> jax.Array:
    """An array every process has whole (host, or on its own devices) placed with `sharding`: jax.device_put when
    this process holds all of the sharding's devices; else each process transfers only its devices' slices."""
    if sharding.is_fully_addressable:
        return jax.device_put(x, sharding)
    value = np.asarray(x)
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def process_rows(sharding: jax.sharding.Sharding, shape: tuple[int, ...]) -> slice:
    """The rows [lo, hi) of a [B, ...] array with `shape` that this process's devices hold under `sharding`: its
    contiguous share of a batch split over the data axes (all rows when the batch is replicated)."""
    spans = {(i[0].start or 0, shape[0] if i[0].stop is None else i[0].stop)
             for i in sharding.addressable_devices_indices_map(tuple(shape)).values()}
    lo, hi = min(a for a, _ in spans), max(b for _, b in spans)
    if sum(b - a for a, b in spans) != hi - lo:
        raise DistributedError(f"distributed: process {jax.process_index()} holds rows {sorted(spans)} of a batch "
                               f"of {shape[0]}, not one contiguous share; order the mesh's devices by process")
    return slice(lo, hi)


def put_rows(x: Any, sharding: jax.sharding.Sharding) -> jax.Array:
    """A batch x [B, ...] that every process has whole, placed with `sharding`: each process transfers only its
    contiguous share of the rows (jax.make_array_from_process_local_data); jax.device_put in a one-process run."""
    if sharding.is_fully_addressable:
        return jax.device_put(x, sharding)
    rows = process_rows(sharding, np.shape(x))
    return jax.make_array_from_process_local_data(sharding, np.asarray(x[rows]), np.shape(x))


def host(tree: Any) -> Any:
    """`tree` with every array that spans other processes' devices gathered to numpy (the same on every process);
    other leaves unchanged, so in a one-process run `tree` itself."""
    def gather(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return multihost_utils.process_allgather(x, tiled=True)
        return x
    return jax.tree.map(gather, tree)
