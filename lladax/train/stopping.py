"""Stopping a training run on a signal: `StopRequest`, the loop's handler of SIGTERM / SIGINT
(one process) or JAX's preemption sync point (several), and the test hook that holds the final
save open. The policy — what a first and a second signal do, during steps and during saves — is
in `lladax.train.loop`'s module doc.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Any

import jax
from etils import epath

log = logging.getLogger("lladax.train.trainer")
HOLD_ENV = "LLADAX_TEST_HOLD_FINAL_SAVE"


class StopRequest:
    """Whether the loop should stop at this step boundary (a context manager installing the
    signal handlers of a one-process run). The loop sets `saving` while a save is in flight and
    `final` once the last step has run; `hurry` = asked again while saving: start no new save."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self.saving = self.final = self.hurry = False
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
        # Runs between bytecodes of the main thread: only flags and log lines here.
        name = signal.Signals(signum).name
        if self.reason is None:
            self.reason = name
            if self.final:
                log.warning(
                    "%s received while the final checkpoint is being written: finishing "
                    "the save first",
                    name,
                )
            else:
                log.warning(
                    "%s received: saving a checkpoint after this step, then stopping "
                    "(send it again to stop without saving)",
                    name,
                )
        elif self.saving:  # killing now would lose the save in flight
            self.hurry = True
            log.warning(
                "%s received again while a checkpoint is being written: stopping as soon "
                "as it has committed, without another save",
                name,
            )
        else:  # asked twice: stop now, the default way
            signal.signal(signum, self._old.get(signum, signal.SIG_DFL))
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            os.kill(os.getpid(), signum)

    def __call__(self, step: int) -> bool:
        if self._multi and self.reason is None:
            from jax.experimental import multihost_utils

            try:  # must be called at every step, with the same step on every host
                if multihost_utils.reached_preemption_sync_point(step):
                    self.reason = "preemption"
            except RuntimeError:  # preemption service disabled
                pass
        return self.reason is not None


def hold_final_save_for_test() -> None:
    """With $LLADAX_TEST_HOLD_FINAL_SAVE=DIR: create DIR/held, then wait (at most 5 min) for
    DIR/release, so a test can signal the final save deterministically (see `lladax.train.loop`)."""
    where = os.environ.get(HOLD_ENV)
    if not where:
        return
    held, release = epath.Path(where) / "held", epath.Path(where) / "release"
    held.write_text("")
    deadline = time.monotonic() + 300
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.05)  # signal handlers run between these sleeps
