"""A rich progress bar for fit, shown only on an interactive terminal (and never with PRUNEKIT_PROGRESS=0)."""
from __future__ import annotations

import os
import sys


def progress_enabled(requested: bool) -> bool:
    """True when a bar was requested, stderr is a TTY, PRUNEKIT_PROGRESS is not "0" and rich is installed."""
    if not requested or os.environ.get("PRUNEKIT_PROGRESS", "1") == "0" or not sys.stderr.isatty():
        return False
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


class ProgressBar:
    """Context manager around ``rich.progress.Progress``; a no-op when disabled."""

    def __init__(self, total: int, *, enabled: bool, initial: int = 0, every: int = 10, label: str = "train",
                 field: str = "loss"):
        self.enabled = progress_enabled(enabled)
        self.label, self.field = label, field
        self.total, self.initial, self.every = total or None, initial, every
        self._n = 0
        self._progress = None

    def __enter__(self) -> "ProgressBar":
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(TextColumn(self.label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                      TextColumn("{task.fields[loss]}"), transient=True)
            self._progress.__enter__()
            self._task = self._progress.add_task(self.label, total=self.total, completed=self.initial, loss="")
        return self

    def advance(self, loss) -> None:
        if self._progress is None:
            return
        self._n += 1
        if self._n % self.every == 0:  # reading the loss synchronises a GPU: do it rarely
            self._progress.update(self._task, advance=self.every, loss=f"{self.field} {float(loss):.4f}")

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)
            self._progress = None
