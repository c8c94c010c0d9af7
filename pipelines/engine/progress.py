"""How a run shows progress: rich bars on a terminal, plain log lines under cron or in a pipe."""

from __future__ import annotations

import logging
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

if TYPE_CHECKING:
    from thresher.pipelines.engine.manifest import Manifest, TaskRecord

log = logging.getLogger("thresher")


class Reporter(Protocol):
    def phase_started(self, stage: str, phase: str, tasks: int, skipped: int, rows: int | None) -> None: ...
    def rows(self, n: int) -> None: ...
    def task_finished(self, record: TaskRecord) -> None: ...
    def phase_finished(self, phase: str) -> None: ...
    def stage_finished(self, manifest: Manifest) -> None: ...
    def message(self, text: str) -> None: ...


class SilentReporter:
    def phase_started(self, stage: str, phase: str, tasks: int, skipped: int, rows: int | None) -> None:
        pass

    def rows(self, n: int) -> None:
        pass

    def task_finished(self, record: TaskRecord) -> None:
        pass

    def phase_finished(self, phase: str) -> None:
        pass

    def stage_finished(self, manifest: Manifest) -> None:
        pass

    def message(self, text: str) -> None:
        pass


def _counts_text(manifest: Manifest) -> str:
    t = manifest.totals
    dropped = " ".join(f"{k}={v}" for k, v in t.dropped.items())
    return f"rows_in={t.rows_in} rows_out={t.rows_out}" + (f" dropped: {dropped}" if dropped else "")


class LogReporter(SilentReporter):
    """One plain line per event, for cron mail, Slurm logs and pipes."""

    def __init__(self) -> None:
        self._stage = ""
        self._done = 0
        self._tasks = 0

    def phase_started(self, stage: str, phase: str, tasks: int, skipped: int, rows: int | None) -> None:
        self._stage, self._done, self._tasks = stage, skipped, tasks
        log.info("%s/%s: %d tasks (%d already done)", stage, phase, tasks, skipped)

    def task_finished(self, record: TaskRecord) -> None:
        self._done += 1
        counts = ""
        if record.counts is not None:
            counts = f" rows_in={record.counts.rows_in} rows_out={record.counts.rows_out}"
        log.info(
            "%s/%s: task %s done (%d/%d)%s in %.2fs",
            self._stage,
            record.phase,
            record.key,
            self._done,
            self._tasks,
            counts,
            record.seconds,
        )

    def stage_finished(self, manifest: Manifest) -> None:
        log.info("%s: finished, %s", manifest.stage, _counts_text(manifest))

    def message(self, text: str) -> None:
        log.info("%s", text)


class RichReporter(SilentReporter):
    """Progress bars: tasks done and rows/s per phase."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._rows = 0
        self._started = 0.0

    def phase_started(self, stage: str, phase: str, tasks: int, skipped: int, rows: int | None) -> None:
        import time

        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("tasks  {task.fields[rows]:,} rows  {task.fields[rate]}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
        )
        self._progress.start()
        self._rows, self._started = 0, time.perf_counter()
        self._task = self._progress.add_task(
            f"{stage}/{phase}", total=tasks, completed=skipped, rows=0, rate=""
        )

    def rows(self, n: int) -> None:
        import time

        self._rows += n
        if self._progress is not None and self._task is not None:
            elapsed = max(time.perf_counter() - self._started, 1e-6)
            self._progress.update(self._task, rows=self._rows, rate=f"{self._rows / elapsed:,.0f} rows/s")

    def task_finished(self, record: TaskRecord) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.advance(self._task)

    def phase_finished(self, phase: str) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def stage_finished(self, manifest: Manifest) -> None:
        self.console.print(f"[green]{manifest.stage}[/green]: {_counts_text(manifest)}")

    def message(self, text: str) -> None:
        self.console.print(text)


class TeeReporter:
    """Sends every event to several reporters: bars on the terminal and records to a log file."""

    def __init__(self, *reporters: Reporter) -> None:
        self.reporters = reporters

    def phase_started(self, stage: str, phase: str, tasks: int, skipped: int, rows: int | None) -> None:
        for r in self.reporters:
            r.phase_started(stage, phase, tasks, skipped, rows)

    def rows(self, n: int) -> None:
        for r in self.reporters:
            r.rows(n)

    def task_finished(self, record: TaskRecord) -> None:
        for r in self.reporters:
            r.task_finished(record)

    def phase_finished(self, phase: str) -> None:
        for r in self.reporters:
            r.phase_finished(phase)

    def stage_finished(self, manifest: Manifest) -> None:
        for r in self.reporters:
            r.stage_finished(manifest)

    def message(self, text: str) -> None:
        for r in self.reporters:
            r.message(text)


def make_reporter(quiet: bool = False) -> Reporter:
    """Log records always (the handlers from configure_logging decide where they go); bars as well when
    a person is watching a terminal."""
    if not quiet and sys.stderr.isatty():
        return TeeReporter(RichReporter(), LogReporter())
    return LogReporter()


class IsoFormatter(logging.Formatter):
    """Timestamps in ISO 8601 with the local UTC offset (2026-12-01T20:18:14.120+00:00), so lines from
    machines in different zones (a login node, compute nodes, a laptop) sort and compare correctly."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        stamp = datetime.fromtimestamp(record.created).astimezone()
        return stamp.isoformat(timespec="milliseconds")


def configure_logging(quiet: bool = False, log_file: Path | None = None) -> None:
    """Plain records to stderr when it is not a terminal (cron, pipes, batch jobs) and to --log-file."""
    formatter = IsoFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(formatter)
    console.setLevel(logging.WARNING if quiet or sys.stderr.isatty() else logging.INFO)
    handlers: list[logging.Handler] = [console]
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        to_file = logging.FileHandler(log_file, encoding="utf-8")
        to_file.setFormatter(formatter)
        to_file.setLevel(logging.INFO)
        handlers.append(to_file)
    root = logging.getLogger("thresher")
    root.handlers[:] = handlers
    root.setLevel(logging.INFO)
    root.propagate = False
