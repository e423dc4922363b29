"""Graceful stop on SIGINT / SIGTERM: finish the step, save, exit; a second signal exits at once."""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from types import FrameType
from typing import Iterator


class TrainingInterrupted(Exception):
    """Training stopped on request after saving a resumable checkpoint; the message says how to resume."""


class StopNow(Exception):
    """Raised by the first signal inside :meth:`StopSignals.urgent`: the work there is abandoned at once."""


class StopSignals:
    """Context manager: while active, the first SIGINT or SIGTERM only sets ``requested``; the
    second restores the default handlers and re-raises, ending the process immediately. Inside
    :meth:`urgent` the first one raises :class:`StopNow` instead, so that work which can be redone
    later (an evaluation) does not hold up the save."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""
        self._previous: dict[int, object] = {}
        self._urgent = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            self._restore()
            signal.raise_signal(signum)
            return
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        if self._urgent:
            self._urgent = False
            print(f"\n{self.signal_name} received: stopping the evaluation and saving a checkpoint "
                  "(send it again to stop at once)", flush=True)
            raise StopNow(self.signal_name)
        print(f"\n{self.signal_name} received: finishing this step and saving a checkpoint "
              "(send it again to stop at once)", flush=True)

    @contextmanager
    def urgent(self, enabled: bool = True) -> Iterator[None]:
        """While active (and ``enabled``), the first signal raises :class:`StopNow` where the main thread
        is, instead of waiting for the next check; one that came before raises it on entry."""
        if not enabled:
            yield
            return
        if self.requested:
            raise StopNow(self.signal_name)
        self._urgent = True
        try:
            yield
        finally:
            self._urgent = False

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
