"""Multi-process (multi-host) start-up: `jax.distributed.initialize` from flags, env or the cluster.

Every process of a multi-host job runs the same `lladax train` command; the processes find each
other through a coordinator (process 0's address) and then form ONE mesh over all their devices.

  explicit   --coordinator-address HOST:PORT --num-processes N --process-id I
  env        LLADAX_COORDINATOR_ADDRESS, LLADAX_NUM_PROCESSES, LLADAX_PROCESS_ID
  auto       --distributed auto: JAX detects the cluster (Cloud TPU pods and multislice, SLURM,
             Open MPI, ...) and fills in all three
  off        (default) a single process; nothing is initialised

Explicit flags win over the environment; giving any of the three turns distributed mode on and
then all three are required. Must run before anything touches a JAX backend.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import jax

ENV = {
    "coordinator_address": "LLADAX_COORDINATOR_ADDRESS",
    "num_processes": "LLADAX_NUM_PROCESSES",
    "process_id": "LLADAX_PROCESS_ID",
}
MODES = ("off", "auto")


class DistributedError(ValueError):
    """Bad or incomplete multi-process settings; the message names the flag and the fix."""


@dataclass(frozen=True)
class ProcessInfo:
    process_index: int
    process_count: int
    local_devices: int
    global_devices: int


def _int(name: str, value: str | int | None) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise DistributedError(f"{name}={value!r} is not an integer") from None


def resolve(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    mode: str = "off",
    env: dict[str, str] | None = None,
) -> dict[str, object] | None:
    """The keyword arguments for `jax.distributed.initialize`, or None for a single process.

    Flags first, then `LLADAX_*` environment variables; `mode="auto"` with neither asks JAX to
    detect the cluster (returns {}).
    """
    if mode not in MODES:
        raise DistributedError(f"--distributed {mode!r} is unknown: use one of {MODES}")
    env = os.environ if env is None else env
    given = {
        "coordinator_address": coordinator_address or env.get(ENV["coordinator_address"]),
        "num_processes": _int(
            "--num-processes",
            num_processes if num_processes is not None else env.get(ENV["num_processes"]),
        ),
        "process_id": _int(
            "--process-id", process_id if process_id is not None else env.get(ENV["process_id"])
        ),
    }
    if all(v is None for v in given.values()):
        return {} if mode == "auto" else None
    missing = [f"--{k.replace('_', '-')} (or {ENV[k]})" for k, v in given.items() if v is None]
    if missing:
        raise DistributedError(
            f"multi-process start needs {', '.join(missing)} as well: give "
            "all three of coordinator address, process count and process id, "
            "or --distributed auto on a TPU pod / SLURM"
        )
    address, n, i = given["coordinator_address"], given["num_processes"], given["process_id"]
    host, _, port = str(address).rpartition(":")
    if not host or not port.isdigit():
        raise DistributedError(
            f"coordinator address {address!r} must be HOST:PORT "
            "(process 0's address, e.g. 10.0.0.2:8476)"
        )
    if n < 1 or not 0 <= i < n:  # type: ignore[operator]
        raise DistributedError(f"process id {i} must be in [0, {n}) and the process count >= 1")
    return given


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: Sequence[int] | None = None,
    mode: str = "off",
) -> ProcessInfo:
    """Join the multi-process job described by the arguments / environment (see module doc).

    Returns this process's place in the job. With nothing given and `mode="off"` this is a
    no-op (one process).
    """
    kwargs = resolve(coordinator_address, num_processes, process_id, mode)
    if kwargs is not None and not jax.distributed.is_initialized():
        if local_device_ids is not None:
            kwargs = kwargs | {"local_device_ids": list(local_device_ids)}
        try:
            jax.distributed.initialize(**kwargs)  # type: ignore[arg-type]
        except (RuntimeError, ValueError) as e:
            detail = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            hint = (
                "JAX found no cluster to join: pass --coordinator-address, --num-processes "
                "and --process-id"
                if not kwargs
                else "check that process 0 is running and the address is reachable"
            )
            raise DistributedError(
                f"jax.distributed.initialize failed ({detail}): {hint}"
            ) from None
    return ProcessInfo(
        jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count()
    )
