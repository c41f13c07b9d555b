"""`lladax convert`: Hugging Face LLaDA checkpoints <-> the Orbax params checkpoint of lladax.

  lladax convert hf-to-orbax SRC DST [--dtype bfloat16] [--mesh data,fsdp,tensor]
  lladax convert orbax-to-hf SRC DST [--max-shard-size 5GB] [--dtype float32] [--mesh ...]
  lladax convert SRC DST [--dtype ...] [--max-shard-size ...]   (HF -> HF re-export)

LLaDA and block-diffusion models convert both ways (config.json records a block-diffusion model's
kind and block_size); the autoregressive baseline stays a `lladax train` run.
hf-to-orbax writes DST/checkpoints/0/{params,meta} (what `lladax sample/chat --checkpoint DST`
and `params_checkpoint.load_params` read) and copies the tokenizer files. Loading validates every
tensor against config.json (names, shapes, truncation), so a conversion is also a download check.

DST must be new, empty, or an earlier `lladax convert` output (it holds lladax_export.json) that
--overwrite replaces; DST may not be SRC or lie inside it (nor SRC inside DST). The output is
written into a temporary directory beside DST and renamed into place when complete, so an
interrupted conversion leaves neither a half-written DST nor a damaged old one.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lladax.cli.common import command_parser

DIRECTIONS = ("hf-to-orbax", "orbax-to-hf")
DEFAULT_SHARD_SIZE = "5GB"


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = command_parser(sub, name, "convert Hugging Face LLaDA <-> Orbax checkpoints", __doc__)
    p.add_argument(
        "paths",
        nargs="+",
        metavar="[DIRECTION] SRC DST",
        help=f"DIRECTION: {' or '.join(DIRECTIONS)} (omit for a HF -> HF re-export)",
    )
    p.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "bfloat16", "float16"],
        help="dtype of the written weights (default: as stored in SRC)",
    )
    p.add_argument(
        "--mesh",
        default=None,
        metavar="DATA,FSDP,TENSOR",
        help="load the params sharded on this device mesh (e.g. 1,8,1)",
    )
    p.add_argument(
        "--max-shard-size",
        default=None,
        help=f"HF safetensors shard size, e.g. 5GB, 2GiB, 500MB (HF output only; "
        f"default {DEFAULT_SHARD_SIZE})",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace DST when it is an earlier `lladax convert` output",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _mesh_sizes(spec: str | None) -> tuple[int, int, int] | None:
    """--mesh DATA,FSDP,TENSOR -> three sizes (each >= 1, or one -1 = the remaining devices)."""
    if spec is None:
        return None
    try:
        sizes = tuple(int(x) for x in spec.split(","))
    except ValueError:
        sizes = ()
    if len(sizes) != 3 or any(s < 1 and s != -1 for s in sizes) or sizes.count(-1) > 1:
        raise ValueError(
            f"--mesh {spec!r}: write three sizes DATA,FSDP,TENSOR, each >= 1 (or "
            "one -1 for the remaining devices), e.g. 1,8,1"
        )
    return sizes  # type: ignore[return-value]


def _mesh(spec: str, sizes: tuple[int, int, int] | None) -> Any:
    if sizes is None:
        return None
    from lladax.model.sharding import make_mesh

    try:
        return make_mesh(*sizes)
    except ValueError as e:
        raise ValueError(f"--mesh {spec}: {str(e).strip()}") from None


class _Bar:
    """A tqdm byte counter (silent when stderr is not a terminal or --no-progress)."""

    def __init__(self, desc: str, total: int, disable: bool) -> None:
        from tqdm import tqdm

        self._bar = tqdm(
            total=total,
            desc=desc,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            disable=True if disable else None,
            leave=False,
        )

    def __call__(self, nbytes: int) -> None:
        self._bar.update(nbytes)

    def close(self) -> None:
        self._bar.close()


def _check(args: argparse.Namespace) -> tuple[str, Path, Path, int]:
    """Every usage check, before any weight is read or JAX starts: (direction, SRC, DST,
    shard bytes)."""
    from lladax import files
    from lladax.store.convert import EXPORT_MARKER
    from lladax.store.safetensors_io import parse_size

    if args.paths[0] in DIRECTIONS:
        direction, rest = args.paths[0], args.paths[1:]
    else:
        direction, rest = "hf-to-hf", args.paths
    if len(rest) != 2:
        raise ValueError(
            f"convert {direction} takes SRC and DST, got {rest}: e.g. `lladax "
            "convert hf-to-orbax LLaDA-8B-Instruct runs/llada8b`"
        )
    src, dst = Path(rest[0]).expanduser(), Path(rest[1]).expanduser()
    if not src.exists():
        raise FileNotFoundError(
            f"SRC {src} does not exist: pass the checkpoint directory to convert"
        )
    if not src.is_dir():
        raise ValueError(
            f"SRC {src} is a file, not a directory: pass the checkpoint directory "
            "(the one holding config.json, or a `lladax train` workdir)"
        )
    if files.same_location(src, dst):
        raise ValueError(
            f"DST {dst} is SRC {src} or lies inside it (or SRC inside DST): the "
            "conversion would overwrite its own source; pass a DST outside SRC"
        )
    if direction == "hf-to-orbax" and args.max_shard_size is not None:
        raise ValueError(
            "--max-shard-size applies to Hugging Face output (orbax-to-hf or "
            "HF -> HF); hf-to-orbax writes an Orbax checkpoint: drop it"
        )
    try:
        shard_bytes = parse_size(args.max_shard_size or DEFAULT_SHARD_SIZE)
    except ValueError as e:
        raise ValueError(f"--max-shard-size: {e}") from None
    if shard_bytes < 1:
        raise ValueError(
            f"--max-shard-size {args.max_shard_size!r} must be at least one byte: write e.g. '5GB'"
        )
    files.check_destination(
        dst,
        markers=(EXPORT_MARKER,),
        what="a converted model",
        flag="DST",
        overwrite=args.overwrite,
    )
    return direction, src, dst, shard_bytes


def _check_source(direction: str, src: Path) -> Any:
    """SRC is a checkpoint of the direction's kind (headers and config only, no weights); returns
    the Orbax source's ModelConfig (None for HF sources)."""
    from lladax.store import hf_format

    if direction != "orbax-to-hf":
        if (src / "checkpoints").is_dir() and not (src / "config.json").exists():
            raise ValueError(
                f"SRC {src} is a `lladax train` workdir (checkpoints/, no "
                "config.json): convert it with `lladax convert orbax-to-hf SRC DST`"
            )
        hf_format.check_hf(src)  # config, shards inside SRC, names and shapes: one line each
        return None
    if not (src / "checkpoints").is_dir():
        raise ValueError(
            f"SRC {src} has no checkpoints/: orbax-to-hf converts a `lladax train` "
            "workdir or an hf-to-orbax output (for a HF directory omit the "
            "direction: `lladax convert SRC DST`)"
        )
    from lladax.store.convert import HF_KINDS

    cfg = cfg_of(src)
    if cfg.kind not in HF_KINDS:
        raise ValueError(
            f"SRC {src} is a kind={cfg.kind!r} model: only LLaDA (diffusion) and block-diffusion "
            "models export to the Hugging Face LLaDA format"
        )
    return cfg


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    import time

    direction, src, dst, shard_bytes = _check(args)
    sizes = _mesh_sizes(args.mesh)
    src_cfg = _check_source(direction, src)
    mesh = _mesh(args.mesh, sizes)
    start = time.perf_counter()
    with _staging(dst) as tmp:
        cfg, total = _convert(args, direction, src, tmp, src_cfg, mesh, shard_bytes, dst.name)
    seconds = time.perf_counter() - start
    print(
        f"{direction}: {cfg.param_count() / 1e6:.1f}M params ({cfg.param_dtype}), "
        f"{total / 2**30:.2f} GiB read in {seconds:.1f} s -> {dst}"
    )
    return 0


def _convert(
    args: argparse.Namespace,
    direction: str,
    src: Path,
    out: Path,
    src_cfg: Any,
    mesh: Any,
    shard_bytes: int,
    name: str,
) -> tuple[Any, int]:
    """Read SRC and write the converted model into `out` (the staging directory)."""
    import numpy as np

    from lladax.store import convert, hf_format, params_checkpoint, safetensors_io

    if direction in ("hf-to-orbax", "hf-to-hf"):
        total = sum(i.nbytes for i in safetensors_io.scan_dir(src).values())
        bar = _Bar(f"read {src.name}", total, args.no_progress)
        try:
            cfg, params = convert.load_hf(src, args.dtype, mesh, progress=bar)
        finally:
            bar.close()
    else:
        # Restored as saved; a --dtype cast happens per tensor while writing (no second copy).
        cfg, params = params_checkpoint.load_params(
            src, shardings=_shardings(src_cfg, mesh), concurrent_gb=1
        )
        total = sum(p.nbytes for p in _leaves(params))
    info = {
        "direction": direction,
        "source": str(src.resolve()),
        "dtype": args.dtype or cfg.param_dtype,
    }
    if direction == "hf-to-orbax":
        tokenizer = convert.copy_tokenizer_files(src, out)
        params_checkpoint.save_params(
            out,
            cfg,
            params,
            extra_meta={
                "source": str(src.resolve()),
                "tokenizer": tokenizer[0] if tokenizer else None,
            },
        )
    else:
        nbytes = (
            sum(int(np.prod(s)) for s in hf_format.hf_shapes(cfg).values())
            * np.dtype(args.dtype or cfg.param_dtype).itemsize
        )
        bar = _Bar(f"write {name}", nbytes, args.no_progress)
        try:
            convert.save_hf(
                out, cfg, params, max_shard_bytes=shard_bytes, dtype=args.dtype, progress=bar
            )
        finally:
            bar.close()
        convert.copy_tokenizer_files(src, out)
        info["max_shard_bytes"] = shard_bytes
    convert.write_export_marker(out, info)
    return cfg, total


# --- atomic output: a staging directory beside DST, renamed into place ----------------------
_STAGE = ".{name}.lladax-convert-{pid}.{kind}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _clean_stale(dst: Path) -> None:
    """Remove staging directories left by a conversion into DST that was killed (kill -9):
    they are this command's own partial output, and their process is gone."""
    prefix = f".{dst.name}.lladax-convert-"
    for d in dst.parent.glob(prefix + "*.tmp"):
        pid = d.name[len(prefix) : -len(".tmp")]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(d, ignore_errors=True)


def _raise_exit(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def _staging(dst: Path) -> Iterator[Path]:
    """Yield an empty staging directory beside DST; on success it replaces DST (an empty
    directory, or an old convert output with --overwrite) by rename. On any failure, SIGTERM or
    Ctrl-C, the staging directory is removed and DST is left as it was."""
    dst = Path(os.path.realpath(dst))
    created = next((a for a in reversed(dst.parents) if not a.exists()), None)
    dst.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale(dst)
    tmp = dst.parent / _STAGE.format(name=dst.name, pid=os.getpid(), kind="tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    main_thread = threading.current_thread() is threading.main_thread()
    # SIGTERM unwinds like Ctrl-C, so the cleanup below runs (signals only reach the main thread).
    old_handler = signal.signal(signal.SIGTERM, _raise_exit) if main_thread else None
    try:
        yield tmp
        # No signal between the two renames: DST is either the old or the new output.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
        try:
            if dst.is_dir() and any(dst.iterdir()):
                old = dst.parent / _STAGE.format(name=dst.name, pid=os.getpid(), kind="old")
                os.rename(dst, old)
                os.rename(tmp, dst)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, dst)  # DST absent or an empty directory
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, old_handler)
        shutil.rmtree(tmp, ignore_errors=True)
        if created is not None and not dst.exists():  # failed: remove the parents made above
            for d in [dst.parent, *dst.parent.parents]:
                if d == created.parent or not _rmdir(d):
                    break


def _rmdir(d: Path) -> bool:
    try:
        d.rmdir()
    except OSError:
        return False
    return True


def cfg_of(run_dir: Any) -> Any:
    """The ModelConfig saved in an Orbax run directory's meta."""
    from lladax.config import ModelConfig
    from lladax.store import params_checkpoint

    _, meta = params_checkpoint.read_meta(run_dir)
    return ModelConfig(**meta["model"])


def _shardings(cfg: Any, mesh: Any) -> Any:
    if mesh is None:
        return None
    from lladax.model.sharding import tree_shardings
    from lladax.model.transformer import param_logical_axes

    return tree_shardings(mesh, param_logical_axes(cfg))


def _leaves(tree: Any) -> list[Any]:
    import jax

    return jax.tree.leaves(tree)
