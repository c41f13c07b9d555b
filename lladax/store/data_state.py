"""The per-process data-iterator item of a training checkpoint (an Orbax handler).

Each JAX process saves its own grain iterator state; a restore reads this process's state back and
reports how many processes saved, so a resume on another process count is caught.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath


class DataStateHandler(ocp.CheckpointHandler):
    """Each process writes its own iterator state (JSON) as `process_<i>-of-<n>.json`."""

    def save(self, directory: epath.Path, args: DataStateSave) -> None:
        name = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
        (epath.Path(directory) / name).write_text(json.dumps(args.state))

    def restore(
        self, directory: epath.Path, args: DataStateRestore | None = None
    ) -> dict[str, Any]:
        """{"state": this process's state or None, "processes": how many processes saved}."""
        directory = epath.Path(directory)
        files = sorted(p.name for p in directory.iterdir() if p.name.startswith("process_"))
        saved = int(files[0].rsplit("-of-", 1)[1].removesuffix(".json")) if files else 0
        own = directory / f"process_{jax.process_index()}-of-{jax.process_count()}.json"
        state = json.loads(own.read_text()) if own.exists() else None
        return {"state": state, "processes": saved}

    def metadata(self, directory: epath.Path) -> None:
        return None

    def finalize(self, directory: epath.Path) -> None:
        pass

    def close(self) -> None:
        pass


@ocp.args.register_with_handler(DataStateHandler, for_save=True)
@dataclasses.dataclass
class DataStateSave(ocp.args.CheckpointArgs):
    state: Any


@ocp.args.register_with_handler(DataStateHandler, for_restore=True)
@dataclasses.dataclass
class DataStateRestore(ocp.args.CheckpointArgs):
    pass
