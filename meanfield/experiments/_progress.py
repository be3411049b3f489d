"""Progress of runs and sweeps: a step bar per run (tqdm, on a terminal), and the step bars of a
``--jobs`` pool, which its workers feed through a shared array. Observers of
:func:`meanfield.run`; nothing here changes what a run computes."""
from __future__ import annotations

import math
import sys
import time


class _StepBar:
    """A tqdm bar over the steps of one run (an observer); updated at most ~10 times a second."""

    def __init__(self, tqdm, total: int, label: str):
        self.bar = tqdm(total=total, desc=label, unit="step", leave=False, mininterval=0.1)
        self.last = 0

    def observe(self, state, evaluation):
        self.bar.set_postfix(risk=f"{evaluation.value:.3e}", refresh=False)

    def after_step(self, state):
        if state.step - self.last >= 50:
            self.bar.update(state.step - self.last)
            self.last = state.step

    def close(self, state, status, message):
        self.bar.close()


class _WorkerSteps:
    """How far the run of a ``--jobs`` pool worker is, shown to the parent (an observer).

    The worker writes into its own slot of an array shared with the parent
    (:class:`_PoolSteps`): run index + 1 (0: no run), steps done, steps in all, and whether the
    counts are steps (fixed-step integrators) or the time t (adaptive ones, at each record);
    at most ~10 times a second, so a step costs one clock read.
    """

    INTERVAL_S = 0.1

    def __init__(self, values, slot: int, index: int, total: float, adaptive: bool, done: float = 0.0):
        self.values, self.base, self.adaptive = values, 4 * slot, adaptive
        self.last = -math.inf
        self.values[self.base + 1:self.base + 4] = [done, total, 1.0 if adaptive else 0.0]
        self.values[self.base] = index + 1

    def after_step(self, state):
        now = time.monotonic()
        if now - self.last >= self.INTERVAL_S:
            self.last = now
            self.values[self.base + 1] = state.t if self.adaptive else state.step

    def observe(self, state, evaluation):
        pass

    def close(self, state, status, message):
        self.values[self.base] = 0


_worker_steps = None  # in a pool worker with step bars: (shared array, this worker's slot)


def claim_slot(values, claimed) -> None:
    """In a pool worker whose parent shows step bars: take the next slot of its shared array.

    Parameters
    ----------
    values : multiprocessing.Array
        The parent's array of :class:`_PoolSteps` (4 numbers per slot).
    claimed : multiprocessing.Value
        How many slots the workers have taken.
    """
    global _worker_steps
    with claimed.get_lock():
        slot = claimed.value
        claimed.value += 1
    _worker_steps = (values, slot) if 4 * slot < len(values) else None


def _worker_observer(spec, experiment, state):
    """The :class:`_WorkerSteps` of a run in a pool worker whose parent shows step bars, else None."""
    if _worker_steps is None:
        return None
    values, slot = _worker_steps
    adaptive = experiment.integrator.advance is not None
    total = experiment.t_max if adaptive else float(round(experiment.t_max / experiment.integrator.dt))
    done = 0.0 if state is None else (state.t if adaptive else state.step)
    return _WorkerSteps(values, slot, spec.index, total, adaptive, done)


class _PoolSteps:
    """Step bars of a ``--jobs`` pool in the parent: one tqdm line per running run, below the
    bar over runs, fed from the slots the workers write (:class:`_WorkerSteps`) and redrawn at
    most ~10 times a second."""

    INTERVAL_S = 0.1

    def __init__(self, tqdm, context, jobs: int, specs):
        self.tqdm, self.jobs = tqdm, jobs
        self.values = context.Array("d", 4 * jobs, lock=False)
        self.claimed = context.Value("i", 0)
        self.specs = {spec.index: spec for spec in specs}
        self.bars = {}  # slot -> (run index, bar)
        self.ended = set()  # runs whose summary came back (a slot may still name a run that failed)
        self.last = -math.inf

    @property
    def initargs(self):
        return (self.values, self.claimed)

    def label(self, index: int) -> str:
        spec = self.specs.get(index)
        if spec is None:
            return f"run {index}"
        swept = " ".join(f"{k.split('.')[-1]}={v}" for k, v in spec.swept.items())
        return f"{spec.id[:8]} {swept}".rstrip()

    def update(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < self.INTERVAL_S:
            return
        self.last = now
        for slot in range(self.jobs):
            index, done, total, adaptive = self.values[4 * slot:4 * slot + 4]
            index = int(index) - 1
            if index in self.ended:
                index = -1
            shown = self.bars.get(slot)
            if shown is not None and shown[0] != index:
                shown[1].close()
                del self.bars[slot]
                shown = None
            if index < 0:
                continue
            if not adaptive:
                done, total = int(done), int(total)
            if shown is None:
                bar = self.tqdm(total=total, desc=self.label(index), unit="t" if adaptive else "step",
                                leave=False, position=slot + 1, mininterval=self.INTERVAL_S)
                shown = self.bars[slot] = (index, bar)
            bar = shown[1]
            if done != bar.n:
                bar.update(done - bar.n)

    def end(self, index: int) -> None:
        """The run ``index`` is over (its summary came back): its bar goes."""
        self.ended.add(index)

    def close(self) -> None:
        for _, bar in self.bars.values():
            bar.close()
        self.bars.clear()


def _tqdm():
    """tqdm when it is installed and stderr is a terminal (batch logs get plain lines)."""
    if not sys.stderr.isatty():
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm
