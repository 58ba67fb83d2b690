"""Piped `sweep run` output never goes quiet while cells train: a line per training cell
every N seconds or N steps (step/total, reward, ETA) and a sweep line with the sweep's ETA."""

from __future__ import annotations

import io

from rich.console import Console

from bicc_lab.sweep.display import LineDisplay, Row, SweepProgress


def _display(**kwargs) -> tuple[LineDisplay, io.StringIO]:
    out = io.StringIO()
    return LineDisplay(Console(file=out, width=200), "title", 2, **kwargs), out


def _lines(out: io.StringIO) -> list[str]:
    text, _ = out.getvalue(), out.truncate(0)
    out.seek(0)
    return [line.split("  ", 1)[1] for line in text.splitlines()]  # without the clock


def test_a_training_cell_speaks_every_n_seconds_and_the_sweep_line_has_an_eta():
    display, out = _display(every_s=30.0)
    a = Row("tiny/grpo/base/s0", "aaa", "training", step=0, max_steps=60)
    b = Row("tiny/grpo/base/s1", "bbb", "queued", max_steps=60)
    display.update([a, b], now=0.0)
    assert _lines(out) == ["tiny/grpo/base/s0 [aaa]  training  step 0/60", "tiny/grpo/base/s1 [bbb]  queued",
                           "sweep: 0 done, 1 running, 1 left; ETA -"]
    a.observe(10, 0.25, 5.0, tokens=1000.0)  # 10 steps in 5 s: 0.5 s a step
    a.observe(20, 0.5, 10.0, tokens=2000.0)  # 1000 tokens in 5 s
    display.update([a, b], now=10.0)
    assert _lines(out) == []  # nothing changed, 30 s not up
    display.update([a, b], now=31.0)
    assert _lines(out) == ["tiny/grpo/base/s0 [aaa]  training  step 20/60  reward 0.500  ETA 20s  200 tok/s",
                           "sweep: 0 done, 1 running, 1 left; ETA -"]
    a.state, a.step = "finished", 60
    b.state = "training"
    display.update([a, b], now=40.0)
    # a cell took 40 s; b just started (no rate yet), nothing queued: a typical cell's 40 s
    assert _lines(out)[-1] == "sweep: 1 done, 1 running, 0 left; ETA 40s"


def test_every_n_steps_comes_first_when_steps_are_fast():
    display, out = _display(every_s=30.0, every_steps=50)
    a = Row("c", "aaa", "training", step=0, max_steps=500)
    display.update([a], now=0.0)
    _lines(out)
    a.step = 49
    display.update([a], now=1.0)
    assert _lines(out) == []
    a.step = 50
    display.update([a], now=2.0)
    assert _lines(out) == ["c [aaa]  training  step 50/500  ETA -"]


def test_the_sweep_eta_adds_the_queued_cells_in_waves_of_the_parallelism():
    progress = SweepProgress(parallel=2)
    rows = [Row(f"c{i}", str(i), "training", max_steps=10) for i in range(2)] + \
        [Row(f"q{i}", f"q{i}", "queued") for i in range(3)]
    progress.observe(rows, 0.0)
    rows[0].state = "finished"
    progress.observe(rows, 100.0)  # one cell took 100 s
    rows[1].eta_s = 20.0
    # 3 queued at 2 at a time: 2 waves of 100 s, after the running cell's 20 s
    assert progress.line(rows) == "sweep: 1 done, 1 running, 3 left; ETA 3m40s"


def test_trains_progress_line_shows_the_reward_of_the_step_it_names():
    from types import SimpleNamespace

    from bicc_lab.backends.trl.callbacks import RichProgressCallback

    class Recorder:
        def __init__(self):
            self.fields, self.lines = {"reward": "-"}, []

        def update(self, completed=None, **fields):
            self.fields.update(fields)
            self.lines.append((completed, self.fields["reward"]))

    callback = RichProgressCallback()
    callback._progress = Recorder()
    state = SimpleNamespace(global_step=1)
    callback.on_step_end(None, state, SimpleNamespace(should_log=True))  # step 1 will be logged
    callback.on_log(None, state, SimpleNamespace(), logs={"reward": 0.25})
    state.global_step = 2
    callback.on_step_end(None, state, SimpleNamespace(should_log=False))  # not logged: step count only
    assert callback._progress.lines == [(1, "0.250"), (2, "0.250")]
