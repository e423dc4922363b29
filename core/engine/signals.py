"""Graceful stop on SIGINT / SIGTERM: finish the step, save, exit; a second signal exits at once."""
from __future__ import annotations

import signal
import threading
from types import FrameType


class TrainingInterrupted(Exception):
    """Training stopped on request after saving a resumable checkpoint; the message says how to resume."""


class StopSignals:
    """Context manager: while active, the first SIGINT or SIGTERM only sets ``requested``; the
    second restores the default handlers and re-raises, ending the process immediately."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            self._restore()
            signal.raise_signal(signum)
            return
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        print(f"\n{self.signal_name} received: finishing this step and saving a checkpoint "
              "(send it again to stop at once)", flush=True)

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        self._restore()
