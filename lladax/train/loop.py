"""The training loop around `train.train_step`: data, resume, eval, logging, checkpoints, stopping.

    lladax.train.loop.run(config)        # `lladax train` calls it

One process or many (after `lladax.train.distributed.initialize`): every process runs this same loop
on its share of each global batch; only process 0 writes metrics and the progress bar.

Resume: if `log.workdir` holds a checkpoint, the newest good one is restored (params, optimizer
state, step, rng, guard counters, EMA and this process's data-iterator position), so a resumed
run sees exactly the batches and noise an uninterrupted one would. A model field that changes
what the weights compute (rope_theta, rms_norm_eps, token ids, heads) is refused; changed data or
train settings, and model fields that only change how it is computed (dtype, remat_policy,
attention_impl), are named in one warning. Otherwise, with `checkpoint.init_from`, a new run
starts from those params (a run dir, an Orbax params export or a Hugging Face directory).
Nothing is written into the workdir before every check has passed.

Stopping early: SIGTERM or SIGINT (one process) — or, with several processes, JAX's preemption
sync point (all hosts agree on the step after any host got SIGTERM) — ends the loop at the next
step boundary with a checkpoint that is waited for. `run` then returns `stopped` = the signal
name; the CLI exits with `EXIT_PREEMPTED` (75, EX_TEMPFAIL: rerun the same command to resume).
The handlers stay installed from before the restore until the last save has committed:
  * a signal during the restore / data set-up stops before the first step (nothing new to save);
  * a second signal stops at once without saving — unless a save is in flight (a periodic async
    save still committing, or the final save): then it waits for that save and stops without
    starting another (SIGKILL is the only way to abandon a save);
  * a signal that arrives once every step has run (during the final save) does not make the run
    "stopped": the save completes, the run is complete and `stopped` stays None (exit 0).
Testing hook: with $LLADAX_TEST_HOLD_FINAL_SAVE=DIR the final save, once started, creates
DIR/held and waits (at most 5 min) for DIR/release, so a test can signal it deterministically.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from lladax.config import ConfigError, ModelConfig, TrainConfig
from lladax.data import pipeline, sft
from lladax.data.tokenizer import SentencePieceTokenizer, check_compatible, load_tokenizer
from lladax.files import atomic_write
from lladax.model import sharding, transformer
from lladax.store import checkpoint, convert
from lladax.train.run_config import DATA_FORMATS, check_run_config, model_config_from
from lladax.train.run_dir import MetricsFile, check_resume, resume_changes
from lladax.train.stopping import StopRequest, hold_final_save_for_test
from lladax.train.throughput import Meter, device_memory_gib, peak_flops_per_device
from lladax.train.trainer import (
    abstract_state,
    eval_loss,
    init_state,
    jit_train_step,
    make_optimizer,
    shardings_of,
)

log = logging.getLogger("lladax.train.trainer")
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped by a signal after saving; rerun to resume


def _check_format(config: Any) -> str:
    fmt = str(config.data.get("format", "text"))
    if fmt not in DATA_FORMATS:
        raise ConfigError(f"data.format={fmt!r} is unknown: use one of {DATA_FORMATS}")
    return fmt


def _chat_options(d: Any) -> dict[str, Any]:
    """`sft.make_sft_batches` options of a config's `data` section (train and eval alike)."""
    return dict(
        source=d.source,
        seq_len=d.seq_len,
        min_answer_len=d.get("min_answer_len", 0),
        random_offset=d.get("random_offset", False),
    )


def train_batches(config: Any, tok: Any, batch_size: int) -> Any:
    """This process's checkpointable iterator of batches (`batch_size` rows each): text
    (`pipeline.make_batches`, packed or not) or chat (`sft.make_sft_batches`) by `data.format`."""
    d = config.data
    where = dict(process_index=jax.process_index(), process_count=jax.process_count())
    if _check_format(config) == "chat":
        return iter(
            sft.make_sft_batches(
                tok, batch_size=batch_size, seed=d.seed, **where, **_chat_options(d)
            )
        )
    return pipeline.make_batches(
        tok, split="train", batch_size=batch_size, **where, **pipeline.options_from_config(d)
    )


def eval_set(config: Any, tok: Any) -> list[dict[str, np.ndarray]]:
    """Held-out GLOBAL batches (identical on every process), fixed for the whole run."""
    d, e = config.data, config.eval
    if not e.every or not e.batches:
        return []
    if _check_format(config) == "chat":
        batches = iter(
            sft.make_sft_batches(
                tok, batch_size=e.batch_size, seed=0, split="eval", **_chat_options(d)
            )
        )
        return [next(batches) for _ in range(e.batches)]
    return pipeline.eval_batches(
        tok,
        source=d.source,
        seq_len=d.seq_len,
        batch_size=e.batch_size,
        max_batches=e.batches,
        field=d.get("field", "text"),
    )


def _put_global(batch: dict[str, np.ndarray], sharding_: Any) -> dict[str, jax.Array]:
    """Place a batch that every process holds whole (eval) as global arrays."""
    return {
        k: jax.make_array_from_callback(v.shape, sharding_, lambda idx, v=v: v[idx])
        for k, v in batch.items()
    }


def _tokenizer_file(tok: Any) -> tuple[str, bytes]:
    """(name in the run directory, bytes) of the tokenizer file the run copies in."""

    name = "tokenizer.model" if isinstance(tok, SentencePieceTokenizer) else "tokenizer.json"
    return name, epath.Path(tok.name).read_bytes()


def _initial_params(path: str, cfg: ModelConfig, like: Any) -> Any:
    """Params of `checkpoint.init_from` placed like `like`; a source of another shape is a
    one-line CheckpointMismatchError before anything is read."""

    src = checkpoint.as_path(path)
    hf = (src / "config.json").exists()
    if hf:
        src_cfg = convert.load_config(os.fspath(src))
    else:
        src_cfg = ModelConfig(**checkpoint.read_meta(src)[1]["model"])
    checkpoint.compare_structure(
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
        _, params = checkpoint.load_params(src, shardings=shardings_of(like))
    return jax.tree.map(lambda p, t: p.astype(t.dtype), params, like)


@dataclasses.dataclass
class _Log:
    """What the loop reports between log points (counters read from the step's metrics)."""

    spike_factor: float
    skipped: int = 0
    spikes: int = 0
    save_block_s: float | None = None

    def report(self, m: dict[str, Any], done: int) -> None:
        if int(m["skipped"]) > self.skipped:
            log.warning(
                "step %d: %d update(s) skipped since the last report for a non-finite "
                "loss or gradient (total %d, learning-rate scale %.3g)",
                done,
                int(m["skipped"]) - self.skipped,
                int(m["skipped"]),
                float(m["lr_scale"]),
            )
        if int(m["spikes"]) > self.spikes:
            log.warning(
                "loss spike at step %d: %.4g > %g x the running mean %.4g (%d spikes so far)",
                int(m["last_spike_step"]) + 1,
                float(m["last_spike_loss"]),
                self.spike_factor,
                float(m["loss_mean"]),
                int(m["spikes"]),
            )
        self.skipped, self.spikes = int(m["skipped"]), int(m["spikes"])


@dataclasses.dataclass
class _Setup:
    """Everything `run` checked before it writes anything."""

    cfg: ModelConfig
    tc: TrainConfig
    tok: Any
    tokenizer_file: tuple[str, bytes]
    mesh: Any
    workdir: epath.Path
    saved: list[int]  # the steps already checkpointed in the workdir
    end_step: int


def _prepare(config: Any, stop_after: int | None) -> _Setup:
    """Every check that needs no write: the run config, tokenizer, mesh divisibility, and a
    resume's consistency with the workdir. Raises a one-line ValueError."""

    check_run_config(config, stop_after)
    cfg, tc = model_config_from(config.model), TrainConfig.from_config(config.train)
    tok = load_tokenizer(config.data.tokenizer or "embedded", vocab_size=cfg.vocab_size)
    check_compatible(tok, cfg)
    mesh = sharding.make_mesh(**dict(config.mesh))
    shards, n_proc = mesh.shape["data"] * mesh.shape["fsdp"], jax.process_count()
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
    if config.eval.every and config.eval.batches and config.eval.batch_size % shards:
        raise ValueError(
            f"eval.batch_size={config.eval.batch_size} is not divisible by the "
            f"{shards} data×fsdp shards: change eval.batch_size or mesh"
        )
    workdir = checkpoint.as_path(config.log.workdir)
    saved = (
        checkpoint.manager(workdir, read_only=True).all_steps()
        if (workdir / "checkpoints").is_dir()
        else []
    )
    setup = _Setup(
        cfg,
        tc,
        tok,
        _tokenizer_file(tok),
        mesh,
        workdir,
        list(saved),
        tc.steps if stop_after is None else min(tc.steps, stop_after),
    )
    if saved:
        check_resume(
            workdir,
            max(saved),
            tc.steps,
            stop_after,
            setup.tokenizer_file,
            config.data.tokenizer or "embedded",
        )
        if config.checkpoint.init_from:
            log.info(
                "resuming %s: checkpoint.init_from is not used (it only starts a new run)", workdir
            )
    elif tc.steps == 0:
        log.warning(
            "train.steps=0: saving the initial params as step 0 without training (set "
            "--config.train.steps to train)"
        )
    return setup


def _report_changes(config: Any, s: _Setup, meta: dict[str, Any], step: int) -> None:
    """The lines naming what a resume changes (the run goes on with the new values)."""
    steps_line, changes_line = resume_changes(meta, s.cfg, config.to_dict())
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


def _start_state(config: Any, s: _Setup, optimizer: Any, mgr: Any) -> tuple[Any, Any]:
    """(TrainState, saved data-iterator state or None): restored, or fresh (from init_from)."""
    cfg, tc, mesh = s.cfg, s.tc, s.mesh
    if s.saved:  # restore straight into the target layout: no random init first
        like = abstract_state(cfg, tc, optimizer, mesh)
        restored = checkpoint.restore(mgr, like, model_cfg=cfg)
        log.info("resumed from %s at step %d", s.workdir, restored.step)
        _report_changes(config, s, restored.meta, restored.step)
        return restored.state, restored.data_state
    params = None
    if config.checkpoint.init_from:  # checked and loaded before the random init
        params = _initial_params(
            config.checkpoint.init_from, cfg, abstract_state(cfg, tc, optimizer, mesh).params
        )
    state = init_state(cfg, tc, optimizer, jax.random.key(tc.seed), mesh)
    if params is not None:
        state = state.replace(params=params)
        if state.ema is not None:
            state = state.replace(ema=jax.tree.map(lambda p: p.astype(jnp.float32) + 0.0, params))
    return state, None


def _postfix(
    loss: float, eval_loss: float | None, speed: dict[str, float], record: dict[str, Any]
) -> dict[str, str]:
    """The progress bar's fields: '-' for what has not been measured yet (no eval so far, or no
    timed step since the compile / the resume), never a misleading 0."""
    timed = speed.get("step_s", 0) > 0
    return {
        "loss": f"{loss:.3f}",
        "eval": "-" if eval_loss is None else f"{eval_loss:.3f}",
        "tok_s": f"{speed['tokens_per_s']:,.0f}" if timed else "-",
        "mfu": f"{speed['mfu']:.1%}" if timed else "-",
        **({"hbm": f"{record['hbm_peak_gib']:.1f}G"} if "hbm_peak_gib" in record else {}),
    }


class _Saver:
    """Starts checkpoint saves and tells the StopRequest while one is in flight."""

    def __init__(self, mgr: Any, meta: dict[str, Any], stop: StopRequest, report: _Log) -> None:
        self.mgr, self.meta, self.stop, self.report = mgr, meta, stop, report
        self.step: int | None = None  # the last step a save was started for

    def save(self, state: Any, train_iter: Any, done: int, force: bool = False) -> None:
        self.stop.saving = True  # from before the checksums until the commit is seen
        t0 = time.perf_counter()
        checkpoint.save(self.mgr, state, self.meta, data_state=train_iter.get_state(), force=force)
        self.report.save_block_s, self.step = time.perf_counter() - t0, done

    def poll(self) -> None:
        if self.stop.saving and not self.mgr.is_saving_in_progress():
            self.stop.saving = False

    def finish(self) -> None:
        self.mgr.wait_until_finished()
        self.stop.saving = False


def _train(
    config: Any,
    s: _Setup,
    state: Any,
    step_fn: Any,
    train_iter: Any,
    evaluate: Any,
    batch_sh: Any,
    metrics: MetricsFile,
    saver: _Saver,
    stop: StopRequest,
    last: dict[str, Any],
) -> Any:
    """The step loop from `state` to `s.end_step` (or a stop request); returns the state."""
    from tqdm import tqdm

    tc, seq, main = s.tc, config.data.seq_len, jax.process_index() == 0
    meter = Meter(
        tc.batch_size * seq,
        s.cfg.flops_per_token(seq) * tc.batch_size * seq,
        last["peak_flops"],
        s.mesh.size,
    )
    start_step = int(state.step)
    bar = tqdm(
        range(start_step, s.end_step),
        initial=start_step,
        total=tc.steps,
        disable=not (config.log.progress and main),
        dynamic_ncols=True,
    )
    for step in bar:
        batch = pipeline.global_batch(next(train_iter), batch_sh)
        state, m = step_fn(state, batch)
        done = step + 1
        if done == start_step + 1:  # keep compilation out of the throughput numbers
            jax.block_until_ready(m)
            meter.start()
        else:
            meter.tick()
        if done % config.log.every == 0 or done == s.end_step:
            m = {k: v.item() for k, v in jax.device_get(m).items()}
            speed = meter.read()
            saver.report.report(m, done)
            record = {
                "step": done,
                "loss": m["loss"],
                "grad_norm": m["grad_norm"],
                "lr": m["lr"],
                "skipped": m["skipped"],
                "spikes": m["spikes"],
                "lr_scale": m["lr_scale"],
                **(speed if speed["step_s"] > 0 else {}),  # none timed yet: no fake 0
                **device_memory_gib(),
            }
            if saver.report.save_block_s is not None:
                record["ckpt_block_s"], saver.report.save_block_s = saver.report.save_block_s, None
            if evaluate and (done % config.eval.every == 0 or done == s.end_step):
                record["eval_loss"] = evaluate(state.params)
            metrics.write(record)
            last.update(record)
            bar.set_postfix(_postfix(m["loss"], last.get("eval_loss"), speed, record))
        if config.checkpoint.every and done % config.checkpoint.every == 0:
            saver.save(state, train_iter, done)
        saver.poll()
        if stop(done) and done < s.end_step:  # at the last step the run is complete anyway
            last["stopped"] = stop.reason
            break
    bar.close()
    return state


def run(config: Any, stop_after: int | None = None) -> dict[str, Any]:
    """Train as `config` (a run ConfigDict, see `run_config.run_config`) says; returns the last
    logged metrics plus `stopped` (None, "stop_after", or the signal that stopped the run).

    Evaluates the held-out loss every `eval.every` steps with fixed noise (comparable across
    steps), logs JSON lines to `workdir/metrics.jsonl`, saves asynchronously every
    `checkpoint.every` steps and always at the end. `stop_after` ends (and checkpoints) the
    run early at that step without changing the schedule of `train.steps`. Every check runs
    before the workdir is written (see `_prepare`); signals: see the module doc.
    """
    s = _prepare(config, stop_after)
    cfg, tc, workdir = s.cfg, s.tc, s.workdir
    main = jax.process_index() == 0
    optimizer = make_optimizer(tc)
    meta = {
        "model": dataclasses.asdict(cfg),
        "run": config.to_dict(),
        "tokenizer": s.tokenizer_file[0],
    }
    peak, peak_source = peak_flops_per_device()
    last: dict[str, Any] = {"stopped": None, "peak_flops": peak, "peak_source": peak_source}
    with StopRequest() as stop, jax.set_mesh(s.mesh):  # handlers cover restore .. last commit
        checkpoint.check_writable(workdir)
        mgr = checkpoint.manager(workdir, keep=config.checkpoint.keep)
        state, data_state = _start_state(config, s, optimizer, mgr)
        batch_sh = sharding.named_sharding(s.mesh, ("batch",))
        step_fn = jit_train_step(cfg, tc, optimizer, shardings_of(state), batch_sh)
        train_iter = train_batches(config, s.tok, tc.batch_size // jax.process_count())
        if data_state is not None:
            train_iter.set_state(data_state)
        evals = [_put_global(b, batch_sh) for b in eval_set(config, s.tok)]
        eval_key = jax.random.key(12345)

        def evaluate(params: Any) -> float:
            losses = [
                eval_loss(
                    params,
                    cfg,
                    b["tokens"],
                    jax.random.fold_in(eval_key, i),
                    prompt_lengths=b.get("prompt_lengths"),
                )
                for i, b in enumerate(evals)
            ]
            return float(jnp.mean(jnp.stack(losses)))

        # Every check passed: from here on the workdir is written.
        if main and not (workdir / s.tokenizer_file[0]).exists():
            atomic_write(workdir / s.tokenizer_file[0], s.tokenizer_file[1])
        metrics = MetricsFile(workdir / "metrics.jsonl", main)
        start_step = int(state.step)
        if s.saved and (previous := metrics.resume(start_step)) is not None:
            last["eval_loss"] = previous
        last["step"] = start_step
        saver = _Saver(mgr, meta, stop, _Log(tc.spike_factor))
        if stop.reason is not None:  # a signal during the restore / set-up: no step taken
            last["stopped"] = stop.reason
        else:
            if start_step == 0 and evals:
                last["eval_loss"] = evaluate(state.params)
                metrics.write({"step": 0, "eval_loss": last["eval_loss"]})
            state = _train(
                config,
                s,
                state,
                step_fn,
                train_iter,
                evals and evaluate,
                batch_sh,
                metrics,
                saver,
                stop,
                last,
            )
        done, stop.final = int(state.step), True
        idle = last["stopped"] and done == start_step  # stopped before its first step
        if not (stop.hurry or idle) and saver.step != done and done not in mgr.all_steps():
            log.info("saving the final checkpoint (step %d)", done)
            saver.save(state, train_iter, done, force=True)
            hold_final_save_for_test()
        saver.finish()
        newest = max(mgr.all_steps(), default=None)
        mgr.close()
    _final_message(last, stop, done, newest, workdir)
    if not last["stopped"] and done < tc.steps:
        last["stopped"] = "stop_after"
    last["step"] = done
    return last


def _final_message(
    last: dict[str, Any], stop: StopRequest, done: int, newest: int | None, workdir: epath.Path
) -> None:
    if last["stopped"]:
        log.warning(
            "stopped by %s at step %d; the newest checkpoint in %s is step %s: rerun the "
            "same command to resume",
            last["stopped"],
            done,
            workdir,
            newest,
        )
    elif stop.reason:
        log.warning(
            "%s arrived during the final checkpoint save; the save completed (step %d): "
            "the run is complete",
            stop.reason,
            done,
        )
