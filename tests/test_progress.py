"""Progress inside the runs of a ``--jobs`` sweep: pool workers write their steps into shared
slots, the parent shows one bar per running run (tqdm, on a terminal)."""
import math
import multiprocessing
from types import SimpleNamespace

import pytest

from meanfield import sweep
from meanfield.experiments import _progress

# Runs of about a second each (m = 512, 2000 steps): long enough for the parent, which looks
# every 0.1 s, to see steps between the first and the last (at m = 128 a run took 0.1 s and
# a clean-clone CI once saw none).
LONG = """
[model]
d = 8
m = 512
activation = "relu"
[problem]
kind = "population"
[problem.teacher]
kind = "orthonormal"
k = 2
[dynamics]
integrator = "gradient_descent"
step = 0.01
t_max = 20.0
[record]
times = 3
particles = false
[sweep]
"run.seed" = [0, 1]
"""


class FakeBar:
    """Stands in for tqdm (a terminal): records what it is told."""

    made = []

    def __init__(self, total=None, desc="", unit="it", leave=True, position=0, mininterval=0.1):
        self.total, self.desc, self.unit, self.position, self.leave = total, desc, unit, position, leave
        self.n, self.counts, self.closed, self.lines = 0, [], False, []
        FakeBar.made.append(self)

    def update(self, k=1):
        self.n += k
        self.counts.append(self.n)

    def write(self, text):
        self.lines.append(text)

    def set_postfix(self, **kwargs):
        pass

    def close(self):
        self.closed = True


def _spec(index, seed):
    return SimpleNamespace(index=index, id=str(index) * 16, swept={"model.m": 64, "run.seed": seed})


def test_worker_slots_feed_one_bar_per_running_run(monkeypatch):
    FakeBar.made = []
    steps = _progress._PoolSteps(FakeBar, multiprocessing.get_context("spawn"), 2, [_spec(0, 0), _spec(1, 1)])
    clock = [100.0]
    monkeypatch.setattr(sweep.time, "monotonic", lambda: clock[0])
    values, _ = steps.initargs
    fixed = _progress._WorkerSteps(values, 1, index=1, total=400.0, adaptive=False, done=50.0)
    flow = _progress._WorkerSteps(values, 0, index=0, total=20.0, adaptive=True)
    for step in range(51, 300):  # one write per 0.1 s of the clock, however many steps
        clock[0] += 0.01
        fixed.after_step(SimpleNamespace(step=step, t=step * 0.05))
    assert values[4 * 1 + 1] in (290, 291, 292, 293, 294, 295, 296, 297, 298, 299)
    flow.after_step(SimpleNamespace(step=1234, t=7.5))
    steps.update()
    bars = {bar.position: bar for bar in FakeBar.made}
    assert set(bars) == {1, 2}  # below the bar over runs (position 0)
    assert bars[2].desc == "11111111 m=64 seed=1" and bars[2].unit == "step" and bars[2].total == 400
    assert bars[2].n == values[5] and bars[2].leave is False
    assert bars[1].desc == "00000000 m=64 seed=0" and bars[1].unit == "t" and bars[1].n == 7.5
    steps.update()  # within 0.1 s of the last: nothing redrawn
    assert len(bars[2].counts) == 1
    fixed.close(None, "complete", "")
    clock[0] += 0.2
    steps.update()
    assert bars[2].closed and not bars[1].closed
    steps.end(0)  # the summary came back though the worker never closed its slot (a failed run)
    steps.update(force=True)
    assert bars[1].closed
    again = _progress._WorkerSteps(values, 0, index=5, total=10.0, adaptive=False)  # the slot's next run
    steps.update(force=True)
    assert FakeBar.made[-1].position == 1 and FakeBar.made[-1].desc == "run 5"
    steps.close()
    assert all(bar.closed for bar in FakeBar.made)
    assert again.values is values


def test_a_jobs_sweep_shows_the_steps_of_its_workers_runs(tmp_path, monkeypatch):
    FakeBar.made = []
    monkeypatch.setattr(sweep, "_tqdm", lambda: FakeBar)  # as on a terminal with tqdm installed
    (tmp_path / "long.toml").write_text(LONG)
    summaries = sweep.run_shard(tmp_path / "long.toml", tmp_path / "out", jobs=2, quiet=False)
    assert [s["status"] for s in summaries] == ["complete", "complete"]
    runs_bar = FakeBar.made[0]
    assert runs_bar.position == 0 and runs_bar.n == 2 and len(runs_bar.lines) == 2
    step_bars = FakeBar.made[1:]
    ids = {s["id"][:8] for s in summaries}
    assert step_bars and {bar.desc.split()[0][:8] for bar in step_bars} <= ids
    for bar in step_bars:
        assert bar.unit == "step" and bar.total == 2000 and bar.position in (1, 2) and bar.closed
        assert all(0 < n <= 2000 for n in bar.counts) and bar.counts == sorted(bar.counts)
    # The parent saw the runs while they ran: counts between the first and the last step.
    assert any(0 < n < 2000 for bar in step_bars for n in bar.counts)


def test_no_step_bars_in_batch_logs(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sweep, "_tqdm", lambda: None)  # stderr is not a terminal
    made = []
    monkeypatch.setattr(sweep, "_PoolSteps", lambda *args: made.append(args))
    (tmp_path / "short.toml").write_text(LONG.replace("t_max = 20.0", "t_max = 0.5"))
    summaries = sweep.run_shard(tmp_path / "short.toml", tmp_path / "out", jobs=2, quiet=False)
    assert made == []
    out = capsys.readouterr().out.splitlines()
    assert sorted(out) == sorted(sweep.format_summary_line(s) for s in summaries)
    assert not math.isnan(summaries[0]["final_risk"])


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__])
