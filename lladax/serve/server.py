"""Running the app: a uvicorn server whose SIGTERM is a drain (stop accepting, finish the
requests in flight and the rows queued, exit 0), for `lladax serve` and the tests."""

from __future__ import annotations

import signal
from types import FrameType

import uvicorn

from lladax.serve.app import create_app
from lladax.serve.engine import Engine


class DrainingServer(uvicorn.Server):
    """uvicorn's server, except that SIGTERM / SIGINT end in a normal return (exit 0) after the
    graceful shutdown instead of being re-raised at the process once it is done."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if sig in (signal.SIGTERM, signal.SIGINT) and not self.force_exit:
            self._captured_signals.remove(sig)


def build_server(
    engine: Engine, host: str = "127.0.0.1", port: int = 8000, *, log_level: str = "info"
) -> DrainingServer:
    """A server for `engine` (not started: `.run()` blocks, in the main thread for signals)."""
    config = uvicorn.Config(
        create_app(engine),
        host=host,
        port=port,
        log_level=log_level,
        timeout_graceful_shutdown=None,
        lifespan="on",
    )
    return DrainingServer(config)


__all__ = ["DrainingServer", "build_server"]
