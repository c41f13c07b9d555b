"""The training loop around `train.train_step`: data, resume, eval, logging, checkpoints, stopping.

    lladax.train.loop.run(config)        # `lladax train` calls it

The checks and the start state come from `run_setup`, the batches from `run_data`; this module
runs the steps, logs (block diffusion: the block size each logged step trained, which a
`train.block_curriculum` changes over the run), evaluates, saves and stops.

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
import time
from collections.abc import Callable
from typing import Any

import jax
from etils import epath

from lladax.data import pipeline
from lladax.diffusion import preference
from lladax.files import atomic_write
from lladax.model import sharding
from lladax.store import checkpoint, layout
from lladax.train.objectives import flops_multiplier
from lladax.train.run_data import eval_set, held_out_loss, put_global, train_batches
from lladax.train.run_dir import MetricsFile
from lladax.train.run_setup import Setup, prepare, start_state
from lladax.train.stopping import StopRequest, hold_final_save_for_test
from lladax.train.throughput import Meter, device_memory_gib, peak_flops_per_device
from lladax.train.trainer import jit_train_step, make_optimizer, shardings_of

log = logging.getLogger("lladax.train.trainer")
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped by a signal after saving; rerun to resume


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
        **({"block": str(record["block_size"])} if "block_size" in record else {}),
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

    def final(self, state: Any, train_iter: Any, idle: bool) -> tuple[int, int | None]:
        """At the end of the run: save the step reached (unless it is saved, a second signal
        hurries the stop, or the run stopped before its first step: `idle`), wait for every
        save to commit, close. Returns (the step reached, the newest checkpoint's step)."""
        done, self.stop.final = int(state.step), True
        if not (self.stop.hurry or idle) and self.step != done and done not in self.mgr.all_steps():
            log.info("saving the final checkpoint (step %d)", done)
            self.save(state, train_iter, done, force=True)
            hold_final_save_for_test()
        self.finish()
        newest = max(self.mgr.all_steps(), default=None)
        self.mgr.close()
        return done, newest


def _train(
    s: Setup,
    state: Any,
    step_fn: Any,
    train_iter: Any,
    evaluate: Callable[[Any], dict[str, float]] | None,
    batch_sh: Any,
    metrics: MetricsFile,
    saver: _Saver,
    last: dict[str, Any],
) -> Any:
    """The step loop from `state` to `s.end_step` (or a stop request); returns the state."""
    from tqdm import tqdm

    run, stop = s.run, saver.stop
    tc, seq, main = s.tc, run.data.seq_len, jax.process_index() == 0
    meter = Meter(
        tc.batch_size * seq,
        s.cfg.flops_per_token(seq) * tc.batch_size * seq * flops_multiplier(s.cfg, run.objective),
        last["peak_flops"],
        s.mesh.size,
    )
    start_step = int(state.step)
    bar = tqdm(
        range(start_step, s.end_step),
        initial=start_step,
        total=tc.steps,
        disable=not (run.log.progress and main),
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
        if done % run.log.every == 0 or done == s.end_step:
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
                **{k: m[k] for k in ("block_size", *preference.METRICS) if k in m},
                **(speed if speed["step_s"] > 0 else {}),  # none timed yet: no fake 0
                **device_memory_gib(),
            }
            if saver.report.save_block_s is not None:
                record["ckpt_block_s"], saver.report.save_block_s = saver.report.save_block_s, None
            if evaluate and (done % run.eval.every == 0 or done == s.end_step):
                record.update(evaluate(state))
            metrics.write(record)
            last.update(record)
            bar.set_postfix(_postfix(m["loss"], last.get("eval_loss"), speed, record))
        if run.checkpoint.every and done % run.checkpoint.every == 0:
            saver.save(state, train_iter, done)
        saver.poll()
        if stop(done) and done < s.end_step:  # at the last step the run is complete anyway
            last["stopped"] = stop.reason
            break
    bar.close()
    return state


def _open_workdir(s: Setup, start_step: int, last: dict[str, Any]) -> MetricsFile:
    """Once every check passed: copy the tokenizer into the workdir (once) and open its
    metrics.jsonl (a resume drops the records past `start_step`, keeps the last eval loss)."""
    main = jax.process_index() == 0
    if main and not (s.workdir / s.tokenizer_file[0]).exists():
        atomic_write(s.workdir / s.tokenizer_file[0], s.tokenizer_file[1])
    metrics = MetricsFile(s.workdir / "metrics.jsonl", main)
    if s.saved and (previous := metrics.resume(start_step)) is not None:
        last["eval_loss"] = previous
    last["step"] = start_step
    return metrics


def run(config: Any, stop_after: int | None = None) -> dict[str, Any]:
    """Train as `config` (a run ConfigDict, see `run_config.run_config`) says; returns the last
    logged metrics plus `stopped` (None, "stop_after", or the signal that stopped the run).

    Evaluates the held-out loss every `eval.every` steps with fixed noise (comparable across
    steps), logs JSON lines to `workdir/metrics.jsonl`, saves asynchronously every
    `checkpoint.every` steps and always at the end. `stop_after` ends (and checkpoints) the
    run early at that step without changing the schedule of `train.steps`. Every check runs
    before the workdir is written (`run_setup.prepare`); signals: see the module doc.
    """
    s = prepare(config, stop_after)
    cfg, tc = s.cfg, s.tc
    optimizer = make_optimizer(tc)
    meta = {
        "model": dataclasses.asdict(cfg),
        "run": s.run.to_dict(),
        "tokenizer": s.tokenizer_file[0],
    }
    peak, peak_source = peak_flops_per_device()
    last: dict[str, Any] = {"stopped": None, "peak_flops": peak, "peak_source": peak_source}
    with StopRequest() as stop, jax.set_mesh(s.mesh):  # handlers cover restore .. last commit
        layout.check_writable(s.workdir)
        mgr = layout.manager(s.workdir, keep=s.run.checkpoint.keep)
        state, data_state = start_state(s, optimizer, mgr)
        batch_sh = sharding.named_sharding(s.mesh, ("batch",))
        pref = s.run.objective
        step_fn = jit_train_step(cfg, tc, optimizer, shardings_of(state), batch_sh, pref)
        train_iter = train_batches(s.run, s.tok, tc.batch_size // jax.process_count())
        if data_state is not None:
            train_iter.set_state(data_state)
        evals = [put_global(b, batch_sh) for b in eval_set(s.run, s.tok)]
        evaluate = held_out_loss(cfg, evals, pref)
        # Every check passed: from here on the workdir is written.
        start_step = int(state.step)
        metrics = _open_workdir(s, start_step, last)
        saver = _Saver(mgr, meta, stop, _Log(tc.spike_factor))
        if stop.reason is not None:  # a signal during the restore / set-up: no step taken
            last["stopped"] = stop.reason
        else:
            if start_step == 0 and evaluate:
                first = evaluate(state)
                last.update(first)
                metrics.write({"step": 0, **first})
            state = _train(s, state, step_fn, train_iter, evaluate, batch_sh, metrics, saver, last)
        idle = bool(last["stopped"]) and int(state.step) == start_step  # before its first step
        done, newest = saver.final(state, train_iter, idle)
    _final_message(last, stop, done, newest, s.workdir)
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
