"""A training run before its first step: every check that writes nothing, then the start state.

`prepare` checks the run config, loads the tokenizer, builds the mesh and checks that batches
divide over it, and that a resume of the workdir can go on as asked (`run_dir.check_resume`);
it writes nothing. `start_state` then restores the newest checkpoint straight into its sharded
layout (naming what the resume changes), or initialises fresh params, from
`checkpoint.init_from` when given: params of the same shapes, of any kind (an autoregressive or
LLaDA run adapted into block diffusion, LLaDA 2.0's recipe; the log line names the source kind).
Both say where a block-size curriculum (`curriculum`) stands. Used by `lladax.train.loop`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
from etils import epath

from lladax.config import ModelConfig
from lladax.data.tokenizer import SentencePieceTokenizer, check_compatible, load_tokenizer
from lladax.model import sharding, transformer
from lladax.store import checkpoint, convert, hf_format, integrity, layout, params_checkpoint
from lladax.train import curriculum
from lladax.train.run_config import RunConfig, TrainConfig, check_run_config
from lladax.train.run_dir import check_resume, resume_changes
from lladax.train.trainer import abstract_state, init_state, reference_of, shardings_of

log = logging.getLogger("lladax.train.trainer")


@dataclasses.dataclass
class Setup:
    """Everything a run checked before it writes anything."""

    run: RunConfig
    tok: Any
    tokenizer_file: tuple[str, bytes]  # (name in the run directory, bytes)
    mesh: Any
    workdir: epath.Path
    saved: list[int]  # the steps already checkpointed in the workdir
    end_step: int  # train.steps, or --stop-after when that is earlier

    @property
    def cfg(self) -> ModelConfig:
        return self.run.model

    @property
    def tc(self) -> TrainConfig:
        return self.run.train


def _tokenizer_file(tok: Any) -> tuple[str, bytes]:
    """(name in the run directory, bytes) of the tokenizer file the run copies in."""
    name = "tokenizer.model" if isinstance(tok, SentencePieceTokenizer) else "tokenizer.json"
    return name, epath.Path(tok.name).read_bytes()


def _check_batches_divide(run: RunConfig, mesh: Any) -> None:
    """Each batch splits evenly over the data×fsdp shards and the processes."""
    tc, shards, n_proc = run.train, mesh.shape["data"] * mesh.shape["fsdp"], jax.process_count()
    if (tc.batch_size // tc.grad_accum) % shards:
        raise ValueError(
            f"micro-batch {tc.batch_size // tc.grad_accum} is not divisible by the "
            f"{shards} data×fsdp shards: change train.batch_size or mesh"
        )
    if tc.batch_size % n_proc:
        raise ValueError(
            f"train.batch_size={tc.batch_size} is not divisible by the {n_proc} "
            "processes: each process loads an equal share of every batch"
        )
    if run.eval.enabled and run.eval.batch_size % shards:
        raise ValueError(
            f"eval.batch_size={run.eval.batch_size} is not divisible by the "
            f"{shards} data×fsdp shards: change eval.batch_size or mesh"
        )


def prepare(config: Any, stop_after: int | None) -> Setup:
    """Every check that needs no write: the run config (a ConfigDict), tokenizer, mesh
    divisibility, and a resume's consistency with the workdir. Raises a one-line ValueError."""
    run = check_run_config(config, stop_after)
    tc = run.train
    tok = load_tokenizer(run.data.tokenizer_spec, vocab_size=run.model.vocab_size)
    check_compatible(tok, run.model)
    mesh = sharding.make_mesh(**dataclasses.asdict(run.mesh))
    _check_batches_divide(run, mesh)
    workdir = integrity.as_path(run.log.workdir)
    saved = (
        layout.manager(workdir, read_only=True).all_steps()
        if (workdir / "checkpoints").is_dir()
        else []
    )
    end_step = tc.steps if stop_after is None else min(tc.steps, stop_after)
    setup = Setup(run, tok, _tokenizer_file(tok), mesh, workdir, list(saved), end_step)
    if saved:
        check_resume(
            workdir, max(saved), tc.steps, stop_after, setup.tokenizer_file, run.data.tokenizer_spec
        )
        _check_same_objective(workdir, run)
        if run.checkpoint.init_from:
            log.info(
                "resuming %s: checkpoint.init_from is not used (it only starts a new run)", workdir
            )
    elif run.objective is not None and not run.checkpoint.init_from:
        raise ValueError(
            "data.format='preference' optimises a trained model against a frozen copy of "
            "itself: set --config.checkpoint.init_from to the (SFT) run to start from"
        )
    elif tc.steps == 0:
        log.warning(
            "train.steps=0: saving the initial params as step 0 without training (set "
            "--config.train.steps to train)"
        )
    return setup


def _initial_params(path: str, cfg: ModelConfig, like: Any) -> Any:
    """Params of `checkpoint.init_from` placed like `like`; a source of another shape is a
    one-line CheckpointMismatchError before anything is read."""
    src = integrity.as_path(path)
    hf = (src / "config.json").exists()
    if hf:
        src_cfg = hf_format.load_config(os.fspath(src))
    else:
        src_cfg = ModelConfig(**params_checkpoint.read_meta(src)[1]["model"])
    integrity.compare_structure(
        "params",
        transformer.abstract_params(src_cfg),
        like,
        os.fspath(src),
        {"model": dataclasses.asdict(src_cfg)},
        cfg,
    )
    if hf:
        _, params = convert.load_hf(os.fspath(src), cfg.weight_dtype, shardings=shardings_of(like))
    else:
        _, params = params_checkpoint.load_params(src, shardings=shardings_of(like))
    log.info("starting from the params of %s: %s", path, _adaptation(src_cfg, cfg))
    return jax.tree.map(lambda p, t: p.astype(t.dtype), params, like)


def _kind(cfg: ModelConfig) -> str:
    size = "" if cfg.block_size is None else f", block_size={cfg.block_size}"
    return f"kind={cfg.kind!r}{size}"


def _adaptation(src: ModelConfig, cfg: ModelConfig) -> str:
    """What `checkpoint.init_from` turns the source model into, in words (the log line)."""
    if (src.kind, src.block_size) == (cfg.kind, cfg.block_size):
        return f"a {_kind(src)} model, trained on as one"
    return (
        f"a {_kind(src)} model adapted into a {_kind(cfg)} one (same weights, "
        "the new kind's attention and loss from the first step)"
    )


def _report_curriculum(tc: TrainConfig, cfg: ModelConfig, step: int) -> None:
    """Where a block-size curriculum stands at `step` (a start or a resume), and a warning when
    the run ends before its last stage (the target block size) is reached."""
    plan = curriculum.stages(tc.block_curriculum, cfg)
    if not plan:
        return
    log.info(
        "block-size curriculum %s: step %d trains block size %d (model.block_size=%d from step %d)",
        tc.block_curriculum,
        step,
        int(curriculum.size_of_step(plan, step)),
        cfg.block_size,
        curriculum.last_stage_start(plan),
    )
    if 0 < curriculum.last_stage_start(plan) >= tc.steps:
        log.warning(
            "train.block_curriculum=%r reaches its last stage (block size %d) at step %d, not "
            "before train.steps=%d: the run never trains the block size it saves",
            tc.block_curriculum,
            cfg.block_size,
            curriculum.last_stage_start(plan),
            tc.steps,
        )


def _report_changes(s: Setup, meta: dict[str, Any], step: int) -> None:
    """The lines naming what a resume changes (the run goes on with the new values)."""
    steps_line, changes_line = resume_changes(meta, s.run)
    for level, line in ((logging.INFO, steps_line), (logging.WARNING, changes_line)):
        if line:
            log.log(level, "resuming %s at step %d %s", s.workdir, step, line)
    if step >= s.end_step:
        log.info(
            "%s is already at step %d: nothing to train (raise --config.train.steps or "
            "--stop-after to go on)",
            s.workdir,
            step,
        )


def _check_same_objective(workdir: epath.Path, run: RunConfig) -> None:
    """A resume keeps the objective: a preference run's state holds a reference model that a
    pretraining / SFT run's does not (and the other way round)."""
    saved_run = params_checkpoint.read_meta(workdir)[1].get("run") or {}
    saved = (saved_run.get("data") or {}).get("format") == "preference"
    if saved != (run.objective is not None):
        raise ValueError(
            f"{workdir} holds a {'preference' if saved else 'pretraining / SFT'} run and "
            f"data.format={run.data.format!r} asks for "
            f"{'another objective' if saved else 'preference optimisation'}: pass a new "
            f"--workdir (with --config.checkpoint.init_from={workdir} to start from it)"
        )


def start_state(s: Setup, optimizer: Any, mgr: Any) -> tuple[Any, Any]:
    """(TrainState, saved data-iterator state or None): restored, or fresh (from init_from;
    a preference run's frozen reference is a copy of those params)."""
    cfg, tc, mesh, pref = s.cfg, s.tc, s.mesh, s.run.objective
    if s.saved:  # restore straight into the target layout: no random init first
        like = abstract_state(cfg, tc, optimizer, mesh, pref)
        restored = checkpoint.restore(mgr, like, model_cfg=cfg)
        log.info("resumed from %s at step %d", s.workdir, restored.step)
        _report_changes(s, restored.meta, restored.step)
        _report_curriculum(tc, cfg, restored.step)
        return restored.state, restored.data_state
    params = None
    if s.run.checkpoint.init_from:  # checked and loaded before the random init
        params = _initial_params(
            s.run.checkpoint.init_from, cfg, abstract_state(cfg, tc, optimizer, mesh).params
        )
    _report_curriculum(tc, cfg, 0)
    state = init_state(cfg, tc, optimizer, jax.random.key(tc.seed), mesh, pref=pref)
    if params is not None:
        state = state.replace(params=params, reference=reference_of(params, pref))
        if state.ema is not None:
            state = state.replace(ema=jax.tree.map(lambda p: p.astype(jnp.float32) + 0.0, params))
    return state, None
