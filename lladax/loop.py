"""The training loop around `train.train_step`: data, resume, eval, logging, checkpoints, stopping.

    lladax.loop.run(config)        # = lladax.train.run; `lladax train` calls it

One process or many (after `lladax.distributed.initialize`): every process runs this same loop
on its share of each global batch; only process 0 writes metrics and the progress bar.

Resume: if `log.workdir` holds a checkpoint, the newest good one is restored (params, optimizer
state, step, rng, guard counters, EMA and this process's data-iterator position), so a resumed
run sees exactly the batches and noise an uninterrupted one would. Otherwise, with
`checkpoint.init_from`, a new run starts from those params (a run dir, an Orbax params export
or a Hugging Face directory).

Stopping early: SIGTERM or SIGINT (one process) — or, with several processes, JAX's preemption
sync point (all hosts agree on the step after any host got SIGTERM) — ends the loop at the next
step boundary with a checkpoint that is waited for. `run` then returns `stopped` = the signal
name; the CLI exits with `EXIT_PREEMPTED` (75, EX_TEMPFAIL: rerun the same command to resume).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from lladax import checkpoint, data, sharding
from lladax.config import ConfigError, ModelConfig, TrainConfig, model_config_from
from lladax.throughput import Meter, device_memory_gib, peak_flops_per_device
from lladax.train import (
    abstract_state,
    eval_loss,
    init_state,
    jit_train_step,
    make_optimizer,
    shardings_of,
)

log = logging.getLogger("lladax.train")
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped by a signal after saving; rerun to resume
FORMATS = ("text", "chat")


class StopRequest:
    """Whether the loop should stop at this step boundary (a context manager installing the
    signal handlers of a one-process run; a second signal stops at once)."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self._old: dict[int, Any] = {}
        self._multi = jax.process_count() > 1

    def __enter__(self) -> StopRequest:
        # Several processes: JAX's preemption notifier owns SIGTERM (a Python handler would
        # replace it), and every host must stop at the same step -> the sync point below.
        if not self._multi and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.reason is not None:  # asked twice: stop now, the default way
            signal.signal(signum, self._old.get(signum, signal.SIG_DFL))
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            os.kill(os.getpid(), signum)
            return
        self.reason = name
        log.warning("%s received: saving a checkpoint after this step, then stopping (send it "
                    "again to stop without saving)", name)

    def __call__(self, step: int) -> bool:
        if self._multi and self.reason is None:
            from jax.experimental import multihost_utils
            try:  # must be called at every step, with the same step on every host
                if multihost_utils.reached_preemption_sync_point(step):
                    self.reason = "preemption"
            except RuntimeError:  # preemption service disabled
                pass
        return self.reason is not None


class MetricsFile:
    """Appends JSON lines to `workdir/metrics.jsonl` (process 0 only). Object stores cannot
    append, so there the file is rewritten whole at each flush."""

    def __init__(self, path: epath.Path, enabled: bool) -> None:
        self.path, self.enabled = path, enabled
        self.local = "://" not in os.fspath(path)
        self.lines: list[str] = []
        if enabled and not self.local and path.exists():
            self.lines = path.read_text().splitlines(keepends=True)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        line = json.dumps(record) + "\n"
        if self.local:
            with open(os.fspath(self.path), "a") as f:
                f.write(line)
        else:
            self.lines.append(line)
            self.path.write_text("".join(self.lines))


def _check_format(config: Any) -> str:
    fmt = str(config.data.get("format", "text"))
    if fmt not in FORMATS:
        raise ConfigError(f"data.format={fmt!r} is unknown: use one of {FORMATS}")
    return fmt


def _chat_options(d: Any) -> dict[str, Any]:
    """`sft.make_sft_batches` options of a config's `data` section (train and eval alike)."""
    return dict(source=d.source, seq_len=d.seq_len, min_answer_len=d.get("min_answer_len", 0),
                random_offset=d.get("random_offset", False))


def train_batches(config: Any, tok: Any, batch_size: int) -> Any:
    """This process's checkpointable iterator of batches (`batch_size` rows each): text
    (`data.make_batches`, packed or not) or chat (`sft.make_sft_batches`) by `data.format`."""
    d = config.data
    where = dict(process_index=jax.process_index(), process_count=jax.process_count())
    if _check_format(config) == "chat":
        from lladax import sft
        return iter(sft.make_sft_batches(tok, batch_size=batch_size, seed=d.seed, **where,
                                         **_chat_options(d)))
    return data.make_batches(tok, split="train", batch_size=batch_size, **where,
                             **data.options_from_config(d))


def eval_set(config: Any, tok: Any) -> list[dict[str, np.ndarray]]:
    """Held-out GLOBAL batches (identical on every process), fixed for the whole run."""
    d, e = config.data, config.eval
    if not e.every or not e.batches:
        return []
    if _check_format(config) == "chat":
        from lladax import sft
        batches = iter(sft.make_sft_batches(tok, batch_size=e.batch_size, seed=0, split="eval",
                                            **_chat_options(d)))
        return [next(batches) for _ in range(e.batches)]
    return data.eval_batches(tok, source=d.source, seq_len=d.seq_len, batch_size=e.batch_size,
                             max_batches=e.batches, field=d.get("field", "text"))


def _put_global(batch: dict[str, np.ndarray], sharding_: Any) -> dict[str, jax.Array]:
    """Place a batch that every process holds whole (eval) as global arrays."""
    return {k: jax.make_array_from_callback(v.shape, sharding_, lambda idx, v=v: v[idx])
            for k, v in batch.items()}


def _copy_tokenizer(tok: Any, workdir: epath.Path) -> str:
    """Copy the tokenizer file into the run directory (self-contained); returns its name."""
    from lladax.tokenizer import SentencePieceTokenizer

    name = "tokenizer.model" if isinstance(tok, SentencePieceTokenizer) else "tokenizer.json"
    if jax.process_index() == 0:
        (workdir / name).write_bytes(epath.Path(tok.name).read_bytes())
    return name


def _initial_params(path: str, cfg: ModelConfig, like: Any) -> Any:
    """Params of `checkpoint.init_from` placed like `like`; a source of another shape is a
    one-line CheckpointMismatchError before anything is read."""
    from lladax import model

    src = checkpoint.as_path(path)
    hf = (src / "config.json").exists()
    if hf:
        from lladax import convert
        src_cfg = convert.load_config(os.fspath(src))
    else:
        src_cfg = ModelConfig(**checkpoint.read_meta(src)[1]["model"])
    checkpoint.compare_structure("params", model.abstract_params(src_cfg), like, os.fspath(src),
                                 {"model": dataclasses.asdict(src_cfg)}, cfg)
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
            log.warning("step %d: %d update(s) skipped since the last report for a non-finite "
                        "loss or gradient (total %d, learning-rate scale %.3g)", done,
                        int(m["skipped"]) - self.skipped, int(m["skipped"]), float(m["lr_scale"]))
        if int(m["spikes"]) > self.spikes:
            log.warning("loss spike at step %d: %.4g > %g x the running mean %.4g (%d spikes "
                        "so far)", int(m["last_spike_step"]) + 1, float(m["last_spike_loss"]),
                        self.spike_factor, float(m["loss_mean"]), int(m["spikes"]))
        self.skipped, self.spikes = int(m["skipped"]), int(m["spikes"])


def run(config: Any, stop_after: int | None = None) -> dict[str, Any]:
    """Train as `config` (a run ConfigDict, see `config.run_config`) says; returns the last
    logged metrics plus `stopped` (None, "stop_after", or the signal that stopped the run).

    Evaluates the held-out loss every `eval.every` steps with fixed noise (comparable across
    steps), logs JSON lines to `workdir/metrics.jsonl`, saves asynchronously every
    `checkpoint.every` steps and always at the end. `stop_after` ends (and checkpoints) the
    run early at that step without changing the schedule of `train.steps`.
    """
    from tqdm import tqdm

    from lladax.tokenizer import check_compatible, load_tokenizer

    cfg = model_config_from(config.model)
    tc = TrainConfig.from_config(config.train)
    _check_format(config)
    n_proc, main = jax.process_count(), jax.process_index() == 0
    workdir = checkpoint.check_writable(config.log.workdir)
    tok = load_tokenizer(config.data.tokenizer or "embedded", vocab_size=cfg.vocab_size)
    check_compatible(tok, cfg)
    mesh = sharding.make_mesh(**dict(config.mesh))
    n_batch_shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if (tc.batch_size // tc.grad_accum) % n_batch_shards:
        raise ValueError(f"micro-batch {tc.batch_size // tc.grad_accum} is not divisible by the "
                         f"{n_batch_shards} data×fsdp shards: change train.batch_size or mesh")
    if tc.batch_size % n_proc:
        raise ValueError(f"train.batch_size={tc.batch_size} is not divisible by the {n_proc} "
                         "processes: each process loads an equal share of every batch")
    optimizer = make_optimizer(tc)
    mgr = checkpoint.manager(workdir, keep=config.checkpoint.keep)
    meta = {"model": dataclasses.asdict(cfg), "run": config.to_dict(),
            "tokenizer": _copy_tokenizer(tok, workdir)}
    with jax.set_mesh(mesh):
        data_state = None
        if mgr.all_steps():  # restore straight into the target layout: no random init first
            like = abstract_state(cfg, tc, optimizer, mesh)
            restored = checkpoint.restore(mgr, like, model_cfg=cfg)
            state, data_state = restored.state, restored.data_state
            log.info("resumed from %s at step %d", workdir, restored.step)
        else:
            params = None
            if config.checkpoint.init_from:  # checked and loaded before the random init
                params = _initial_params(config.checkpoint.init_from, cfg,
                                         abstract_state(cfg, tc, optimizer, mesh).params)
            state = init_state(cfg, tc, optimizer, jax.random.key(tc.seed), mesh)
            if params is not None:
                state = state.replace(params=params)
                if state.ema is not None:
                    state = state.replace(ema=jax.tree.map(
                        lambda p: p.astype(jnp.float32) + 0.0, params))
        batch_sh = sharding.named_sharding(mesh, ("batch",))
        step_fn = jit_train_step(cfg, tc, optimizer, shardings_of(state), batch_sh)
        train_iter = train_batches(config, tok, tc.batch_size // n_proc)
        if data_state is not None:
            train_iter.set_state(data_state)
        evals = [_put_global(b, batch_sh) for b in eval_set(config, tok)]
        eval_key = jax.random.key(12345)

        def evaluate(params: Any) -> float:
            losses = [eval_loss(params, cfg, b["tokens"], jax.random.fold_in(eval_key, i),
                                prompt_lengths=b.get("prompt_lengths"))
                      for i, b in enumerate(evals)]
            return float(jnp.mean(jnp.stack(losses))) if losses else float("nan")

        peak, peak_source = peak_flops_per_device()
        seq = config.data.seq_len
        meter = Meter(tc.batch_size * seq, cfg.flops_per_token(seq) * tc.batch_size * seq,
                      peak, mesh.size)
        start_step = int(state.step)
        metrics_file = MetricsFile(workdir / "metrics.jsonl", main)
        last: dict[str, Any] = {"step": start_step, "stopped": None}
        end_step = tc.steps if stop_after is None else min(tc.steps, stop_after)
        bar = tqdm(range(start_step, end_step), initial=start_step, total=tc.steps,
                   disable=not (config.log.progress and main), dynamic_ncols=True)
        if start_step == 0 and evals:
            last["eval_loss"] = evaluate(state.params)
            metrics_file.write({"step": 0, "eval_loss": last["eval_loss"]})
        report, saved_step = _Log(tc.spike_factor), None

        def save(done: int, force: bool = False) -> None:
            nonlocal saved_step
            t0 = time.perf_counter()
            checkpoint.save(mgr, state, meta, data_state=train_iter.get_state(), force=force)
            report.save_block_s, saved_step = time.perf_counter() - t0, done

        with StopRequest() as stop_requested:
            for step in bar:
                batch = data.global_batch(next(train_iter), batch_sh)
                state, m = step_fn(state, batch)
                done = step + 1
                if done == start_step + 1:  # keep compilation out of the throughput numbers
                    jax.block_until_ready(m)
                    meter.start()
                else:
                    meter.tick()
                if done % config.log.every == 0 or done == end_step:
                    m = {k: v.item() for k, v in jax.device_get(m).items()}
                    speed = meter.read()
                    report.report(m, done)
                    record = {"step": done, "loss": m["loss"], "grad_norm": m["grad_norm"],
                              "lr": m["lr"], "skipped": m["skipped"], "spikes": m["spikes"],
                              "lr_scale": m["lr_scale"], **speed, **device_memory_gib()}
                    if report.save_block_s is not None:
                        record["ckpt_block_s"], report.save_block_s = report.save_block_s, None
                    if evals and (done % config.eval.every == 0 or done == end_step):
                        record["eval_loss"] = evaluate(state.params)
                    metrics_file.write(record)
                    last.update(record)
                    bar.set_postfix(loss=f"{m['loss']:.3f}",
                                    eval=f"{last.get('eval_loss', 0):.3f}",
                                    tok_s=f"{speed['tokens_per_s']:,.0f}",
                                    mfu=f"{speed['mfu']:.1%}",
                                    **({"hbm": f"{record['hbm_peak_gib']:.1f}G"}
                                       if "hbm_peak_gib" in record else {}))
                if config.checkpoint.every and done % config.checkpoint.every == 0:
                    save(done)
                if stop_requested(done):
                    last["stopped"] = stop_requested.reason
                    break
        bar.close()
        done = int(state.step)
        if saved_step != done and done not in mgr.all_steps():
            save(done, force=True)
        mgr.wait_until_finished()
        mgr.close()
    if last["stopped"]:
        log.warning("stopped by %s at step %d; checkpoint saved in %s: rerun the same command "
                    "to resume", last["stopped"], done, workdir)
    elif done < tc.steps:
        last["stopped"] = "stop_after"
    last.update(step=done, peak_flops=peak, peak_source=peak_source)
    return last
