"""libtpu on a machine without a TPU: quiet.

With the `tpu` extra installed (the `lladax plan --aot` workflow: compile for a TPU slice from a
CPU machine), libtpu initialises on the first JAX call and, finding no TPU, prints a page of
"could not determine TPU accelerator type" / "INVALID_ARGUMENT ... TPU_WORKER_HOSTNAMES" errors
before the CPU work starts. Those come from its start-up query of the TPU VM's metadata server.
On a machine with no TPU device files, `quiet_without_tpu` gives libtpu the answers it would
have looked up — a single local worker — as environment DEFAULTS (a value the user set wins), so
JAX falls back to the CPU silently and `jax.experimental.topologies` still describes any slice
for ahead-of-time compilation. On a TPU VM it changes nothing.

The `lladax` console script calls it first thing (before JAX starts); a library user who wants
the same calls it before their first JAX call.
"""

from __future__ import annotations

import glob
import os
from collections.abc import MutableMapping

# What libtpu would otherwise ask the (absent) metadata server; any accelerator type works for
# describing other topologies, it only has to be a valid name.
DEFAULTS = {
    "TPU_SKIP_MDS_QUERY": "1",
    "TPU_ACCELERATOR_TYPE": "v5p-8",
    "TPU_WORKER_HOSTNAMES": "localhost",
    "TPU_WORKER_ID": "0",
    # No chips to guard: let several processes load libtpu (parallel AOT compiles, test workers)
    "ALLOW_MULTIPLE_LIBTPU_LOAD": "1",
}
TPU_DEVICE_FILES = ("/dev/accel*", "/dev/vfio/[0-9]*")  # v2-v5e: accel; v5p, v6e: vfio


def has_tpu() -> bool:
    """Whether this machine has TPU device files (a TPU VM)."""
    return any(glob.glob(pattern) for pattern in TPU_DEVICE_FILES)


def quiet_without_tpu(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Set `DEFAULTS` in `environ` (never overriding a value) unless this machine has a TPU;
    returns whether it did."""
    if has_tpu():
        return False
    for key, value in DEFAULTS.items():
        environ.setdefault(key, value)
    return True
