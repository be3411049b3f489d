"""Ctrl-C and SIGTERM: a run stops at the next step boundary with everything kept.

A signal handler that raised ``KeyboardInterrupt`` wherever the interpreter happened to be
could land inside a write of the run file (a record half appended), inside a ``finally`` that
swallows it ("Exception ignored in ..."), or inside a process pool's bookkeeping. Instead,
while a run loop executes (:func:`deferred`), SIGINT and SIGTERM only set a flag; the loop
calls :func:`poll` between steps, which raises :class:`Interrupted` there, so the state it
leaves is a whole step that the run file checkpoints. Outside a run loop (building a problem,
compiling kernels) the signal raises at once: nothing has been written that a checkpoint
would have to cover.

The command line installs the handlers for both signals (:func:`handling`); :func:`meanfield.run`
installs the SIGINT one for its loop when the program has not replaced Python's default, so a
notebook's interrupt button also stops at a step boundary.

Processes of a ``--jobs`` pool call :func:`worker_setup`: they ignore a signal while idle (the
parent stops the pool) and watch their parent, so that a parent killed with SIGKILL takes them
with it: they stop their run as for SIGTERM, keep it resumable, and exit.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
import time

__all__ = ["Interrupted", "deferred", "handling", "immediate", "poll", "worker_setup"]

SIGNALS = (signal.SIGINT, signal.SIGTERM)
PARENT_POLL_S = 0.5  # how often a pool worker checks that its parent is alive
ORPHAN_GRACE_S = 60.0  # how long an orphaned worker may take to checkpoint before it is ended


class Interrupted(KeyboardInterrupt):
    """Raised at a step boundary (or at once outside a run loop) after SIGINT or SIGTERM.

    Attributes
    ----------
    signum : int
    exit_status : int
        128 + signum: 130 for SIGINT, 143 for SIGTERM (the shells' convention).
    """

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)
        self.exit_status = 128 + self.signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


_pending: list[int] = []  # signals received while deferred, not yet raised
_depth = 0  # nesting of deferred() blocks
_stopping = False  # an Interrupted was raised in this process: later signals only wait
_worker = {"enabled": False, "active": False, "orphaned": False, "done": None}
received: list[int] = []  # every signal this process handled, in order (the CLI's exit status)


def _handler(signum, frame):
    received.append(signum)
    if _worker["enabled"] and not _worker["active"]:
        if _worker["orphaned"]:
            os._exit(128 + signum)
        return  # an idle pool worker: the parent stops the pool
    if _depth > 0 or _stopping:
        if not _pending:
            _pending.append(signum)
        return
    _raise(signum)


def _raise(signum: int):
    global _stopping
    _stopping = True
    raise Interrupted(signum)


def poll() -> None:
    """Raise :class:`Interrupted` if a signal arrived since the last call (a step boundary)."""
    if _pending:
        _raise(_pending.pop())


@contextlib.contextmanager
def deferred():
    """Within the block, SIGINT and SIGTERM wait for :func:`poll` (or the end of the block)."""
    global _depth
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
    if _depth == 0:
        poll()


@contextlib.contextmanager
def immediate():
    """Within a :func:`deferred` block, let a signal raise at once (a long computation whose
    partial result is discarded, such as an adaptive solver's way to the next record)."""
    global _depth
    poll()
    saved, _depth = _depth, 0
    try:
        yield
    finally:
        _depth = saved


def _is_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def handling(signals=SIGNALS, only_if_default: bool = False):
    """Install the handler for ``signals`` in this block (main thread only; a no-op elsewhere).

    With ``only_if_default``, a signal whose handler the program has changed from Python's
    default is left alone.
    """
    if not _is_main_thread():
        yield
        return
    previous = {}
    if not any(signal.getsignal(signum) is _handler for signum in signals):
        reset()  # a new command (or a new run in a notebook): earlier signals are done with
    for signum in signals:
        current = signal.getsignal(signum)
        if only_if_default and current not in (signal.default_int_handler, signal.SIG_DFL):
            continue
        if current is _handler:
            continue
        previous[signum] = current
        signal.signal(signum, _handler)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def stop_requested_in_worker() -> bool:
    """In a pool worker: whether a signal has asked this sweep to stop."""
    return _worker["enabled"] and bool(received)


def reset() -> None:
    """Forget received signals (a new command in the same process, e.g. a test)."""
    global _stopping
    _pending.clear()
    received.clear()
    _stopping = False


@contextlib.contextmanager
def worker_run():
    """Marks a pool worker busy with a run: signals then stop the run instead of being ignored."""
    _worker["active"] = True
    try:
        yield
    finally:
        _worker["active"] = False
        if _worker["orphaned"]:
            os._exit(143)


def worker_setup() -> None:
    """In a pool worker: install the handlers and start the parent watch."""
    reset()
    _worker["enabled"] = True
    for signum in SIGNALS:
        signal.signal(signum, _handler)
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        _worker["orphaned"] = True
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(ORPHAN_GRACE_S)
        os._exit(143)

    threading.Thread(target=watch, name="meanfield-parent-watch", daemon=True).start()
