"""The console without Ray: rank 0's progress messages, how each mode shows them, and the worker stages."""

import contextlib
import fcntl
import io
import itertools
import os
import re
import select
import struct
import subprocess
import sys
import tempfile
import termios
import time
from collections.abc import Iterator
from dataclasses import replace
from types import SimpleNamespace
from typing import TextIO

import pytest

from dltrain.console import Console, progress_line, resolve_mode
from dltrain.progress import ProgressSender
from dltrain.stage import remove_left_behind, stage
from dltrain.sweep import report

from helpers.config import resolved

PROGRESS_LINE = re.compile(
    r"^epoch \d+/\d+  step \d+/\d+  \d+%  loss \d+\.\d{4}  accuracy \d\.\d{4}  [\d,]+ samples/s  ETA \d+(s|m\d\ds)$"
)


class Clock:
    """A clock the test moves."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _sent_messages(steps: int, step_seconds: float, first_step_seconds: float = 0.0) -> list[dict]:
    clock, sent = Clock(), []
    sender = ProgressSender(sent.append, epochs=3, steps=steps, global_batch_size=128, clock=clock)
    sender.on_epoch_begin(1)
    for batch in range(steps):
        clock.now += step_seconds + (first_step_seconds if batch == 0 else 0)
        sender.on_train_batch_end(batch, {"loss": 1.0 / (batch + 1), "accuracy": 0.5})
    return sent


def test_rank_0_sends_at_each_quarter_and_every_second_but_not_the_first_or_last_step():
    sent = _sent_messages(steps=100, step_seconds=0.05, first_step_seconds=20)  # the first step traces the graph
    steps = [message["step"] for message in sent]
    assert {25, 50, 75} <= set(steps) and 1 not in steps and 100 not in steps
    assert steps == sorted(steps) and all(later - earlier <= 21 for earlier, later in itertools.pairwise(steps))
    message = next(message for message in sent if message["step"] == 50)
    assert (message["epoch"], message["epochs"], message["steps"], message["kind"]) == (2, 3, 100, "progress")
    # Rates leave out the first step: 128 samples per 0.05 s, and 50 steps to go at that pace.
    assert message["samples_per_second"] == pytest.approx(2560)
    assert message["eta_seconds"] == pytest.approx(2.5)
    assert message["loss"] == pytest.approx(1 / 50)


def test_short_epochs_send_only_the_quarters():
    assert [message["step"] for message in _sent_messages(steps=8, step_seconds=0.01)] == [2, 4, 6]


def _progress(epoch: int, step: int, steps: int = 100, run_id: str = "r1") -> dict:
    return {
        "kind": "progress", "run_id": run_id, "epoch": epoch, "epochs": 3, "step": step, "steps": steps,
        "loss": 0.41324, "accuracy": 0.852, "samples_per_second": 2650.4, "eta_seconds": 8.2,
    }  # fmt: skip


def _epoch(epoch: int, run_id: str = "r1") -> dict:
    return {
        "kind": "epoch", "run_id": run_id, "epoch": epoch, "epochs": 3, "loss": 0.4, "accuracy": 0.85,
        "val_loss": 0.5, "val_accuracy": 0.8, "seconds": 30.0, "samples_per_second": 5431.2,
    }  # fmt: skip


def test_a_progress_line_reads_as_the_issue_shows_it():
    line = progress_line(_progress(3, 50, 100) | {"epochs": 30})
    assert line == "epoch 3/30  step 50/100  50%  loss 0.4132  accuracy 0.8520  2,650 samples/s  ETA 8s"
    assert PROGRESS_LINE.match(line)
    assert progress_line(_progress(1, 1) | {"eta_seconds": 65}).endswith("ETA 1m05s")


def _show_an_epoch(mode: str, step_seconds: float = 1.0) -> tuple[Console, list[str]]:
    """Epoch 1 of 100 steps, a progress message a step, then its epoch line."""
    stream, clock = io.StringIO(), Clock()
    console = Console(mode, stream, clock)
    for step in range(2, 100):
        clock.now += step_seconds
        console.show(_progress(1, step))
    console.show(_epoch(1))
    return console, stream.getvalue().splitlines()


def test_lines_come_at_each_quarter_or_after_10_s():
    _, lines = _show_an_epoch("lines", step_seconds=0.1)  # a 10 s epoch: the quarters alone
    assert [line.split("  ")[1] for line in lines[:-1]] == ["step 25/100", "step 50/100", "step 75/100"]
    assert all(PROGRESS_LINE.match(line) for line in lines[:-1])
    assert lines[-1] == (
        "epoch 1/3  loss 0.4000  accuracy 0.8500  val_loss 0.5000  val_accuracy 0.8000  30.0s  5,431 samples/s"
    )
    _, lines = _show_an_epoch("lines", step_seconds=1.0)  # a 100 s epoch: every 10 s as well
    steps = [int(line.split("  ")[1].split()[1].split("/")[0]) for line in lines[:-1]]
    assert steps == [12, 22, 25, 35, 45, 50, 60, 70, 75, 85, 95]  # 10 s count from the first message, step 2


@pytest.mark.parametrize("mode", ["lines", "none"])
def test_epoch_lines_print_once_in_order_and_late_progress_is_dropped(mode):
    stream, epochs_ended = io.StringIO(), []
    console = Console(mode, stream, Clock(), on_epoch=epochs_ended.append)
    console.show(_epoch(1))
    console.show(_progress(1, 50))  # late: epoch 1 is printed
    console.show(_epoch(1))  # again, after a restart of the workers
    console.show(_epoch(2))
    assert stream.getvalue().splitlines() == [line for line in stream.getvalue().splitlines() if "  step " not in line]
    printed = [line.split("  ")[0] for line in stream.getvalue().splitlines()]
    assert printed == (["epoch 1/3", "epoch 2/3"] if mode == "lines" else [])
    assert epochs_ended == [_epoch(1)["run_id"]] * 2  # each epoch once, whatever the mode shows (the MLflow mirror)


def test_the_next_epochs_progress_waits_for_this_epochs_line():
    stream = io.StringIO()
    console = Console("lines", stream, Clock())
    for message in (_progress(1, 25), _progress(2, 25), _progress(2, 50), _epoch(1), _progress(2, 75), _epoch(2)):
        console.show(message)
    assert [line.split("  ")[:2] for line in stream.getvalue().splitlines()] == [
        ["epoch 1/3", "step 25/100"], ["epoch 1/3", "loss 0.4000"], ["epoch 2/3", "step 25/100"],
        ["epoch 2/3", "step 50/100"], ["epoch 2/3", "step 75/100"], ["epoch 2/3", "loss 0.4000"],
    ]  # fmt: skip


@pytest.mark.parametrize(("mode", "lines"), [("epochs", 1), ("none", 0)])
def test_epochs_mode_prints_only_epoch_lines_and_none_nothing(mode, lines):
    console, printed = _show_an_epoch(mode)
    assert len(printed) == lines and all(line.startswith("epoch 1/3  loss") for line in printed)
    assert console.latest == {}  # the epoch ended: no progress is left to show


@contextlib.contextmanager
def _terminal(columns: int) -> Iterator[tuple[TextIO, int]]:
    """A real pseudo-terminal of `columns` x 40 (0 x 0 as some container runtimes give): (its stream, its reader)."""
    reader, writer = os.openpty()
    fcntl.ioctl(writer, termios.TIOCSWINSZ, struct.pack("HHHH", 40 if columns else 0, columns, 0, 0))
    os.set_blocking(reader, False)
    with os.fdopen(writer, "w", encoding="utf-8") as stream:
        try:
            yield stream, reader
        finally:
            os.close(reader)


def _read_until(reader: int, text: str, timeout_s: float = 30) -> str:
    """What the terminal has shown, read as it comes until `text` is among it."""
    shown = ""
    deadline = time.monotonic() + timeout_s
    while text not in shown:
        ready, _, _ = select.select([reader], [], [], max(deadline - time.monotonic(), 0))
        assert ready, f"{text!r} never reached the terminal; it showed {shown!r}"
        shown += os.read(reader, 65536).decode()
    return shown


def test_the_bar_on_a_terminal_shows_the_figures_and_gives_way_to_the_epoch_line():
    with _terminal(120) as (stream, reader):
        console = Console("auto", stream, Clock())
        assert console.mode == "bar"
        console.show(_progress(1, 50))
        console.show(_progress(1, 75))
        bar = _read_until(reader, "75/100")
        frames = [frame.strip() for frame in bar.split("\r") if frame.strip()]
        assert (
            frames[0].startswith("epoch 1/3  ")
            and "  50/100   50%  loss 0.4132  accuracy 0.8520  2,650 samples/s  ETA 8s" in frames[0]
        )
        assert "  75/100   75%  loss " in frames[-1] and all(len(frame) <= 120 for frame in frames)
        console.show(_epoch(1))
        assert _read_until(reader, "samples/s\r\n").strip().endswith("30.0s  5,431 samples/s")  # the bar is cleared


def test_auto_is_a_bar_on_a_terminal_with_a_width_and_lines_elsewhere():
    with _terminal(120) as (stream, _):
        assert resolve_mode("auto", stream) == "bar"
        assert resolve_mode("epochs", stream) == "epochs"
    with _terminal(0) as (stream, _):  # a terminal without a width: a bar would be empty
        assert resolve_mode("auto", stream) == "lines"
    assert resolve_mode("auto", io.StringIO()) == "lines"
    # Rank 0 sends progress only where it shows.
    assert [Console(mode, io.StringIO()).shows_progress for mode in ("bar", "lines", "epochs", "none")] == [
        True, True, False, False,
    ]  # fmt: skip


def test_the_sweep_table_shows_where_each_running_trial_is():
    console = Console("none", io.StringIO(), Clock())
    console.show(_progress(3, 45, run_id="s1-t1"))
    settings = replace(resolved("sweep=asha").sweep, metric="val_accuracy", space={"trainer": {"learning_rate": "x"}})
    table = report.TrialTable("s1", settings, 3)
    trials = [
        SimpleNamespace(trial_id="t1", status="RUNNING", last_result={"epoch": 2, "val_accuracy": 0.8}, config={}),
        SimpleNamespace(trial_id="t2", status="PENDING", last_result={}, config={}),
    ]
    with report.progress_to("s1", console):  # as run_sweep does while sweep s1 runs
        lines = table.table(trials).splitlines()
    assert lines[1].split() == ["trial", "status", "epoch", "progress", "val_accuracy", "trainer.learning_rate"]
    assert lines[2].split() == ["t1", "RUNNING", "2", "epoch", "3", "45%", "0.8"]
    assert lines[3].split() == ["t2", "PENDING"]


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_what_dead_processes_left_is_removed_and_what_live_ones_use_is_kept(tmp_path):
    dead, gone = _dead_pid(), _dead_pid()
    dead_stage = tmp_path / f"dltrain-20261201-000000-abcdef-worker1-pid{dead}-x1y2z3"
    live_stage = tmp_path / f"dltrain-20261201-000000-abcdef-worker0-pid{os.getpid()}-a1b2c3"
    dead_log = tmp_path / f"dltrain-driver-pid{gone}-q1w2e3.log"
    kept_log = tmp_path / "dltrain-20261201-000000-abcdef-driver.log"  # kept on purpose after an outage
    for folder in (dead_stage, live_stage):
        (folder / "checkpoint").mkdir(parents=True)
    for log in (dead_log, kept_log):
        log.write_text("a log")
    assert sorted(remove_left_behind(tmp_path)) == sorted([dead_stage, dead_log])
    assert not dead_stage.exists() and not dead_log.exists() and live_stage.is_dir() and kept_log.is_file()


def test_a_stage_is_the_temporary_folder_while_it_lasts_and_is_removed_after():
    with stage("run-worker0") as folder:
        assert folder.name.startswith(f"dltrain-run-worker0-pid{os.getpid()}-")
        with tempfile.NamedTemporaryFile(prefix="__autograph_generated_file", delete=False) as generated:
            assert generated.name.startswith(str(folder))
    assert not folder.exists() and tempfile.gettempdir() != str(folder / "tmp")
