"""The one console (stderr) and the one progress-bar factory every stage uses.

On a terminal, rich draws live bars; in a log file (not a TTY) bars are not drawn at all (their `\\r`
updates would merge into one line) and long paths or code are never wrapped.
"""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


def make_console() -> Console:
    """A stderr console. When stderr is not a terminal (a log file, a pipe), printed lines are never
    wrapped (soft wrap: a long path stays one line) and rules are 100 columns wide."""
    tty = sys.stderr.isatty()
    return Console(stderr=True, soft_wrap=not tty, width=None if tty else 100)


console = make_console()


def progress(label: str, out: Console | None = None, *, transient: bool = False) -> Progress:
    """A progress bar `label ━━━ 3/10 0:00:12 status`, disabled when not on a terminal.

    Tasks are added with a `status` field: `bar.add_task(label, total=n, status="")`.
    """
    out = out or console
    return Progress(
        TextColumn(f"[cyan]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
        console=out,
        transient=transient,
        disable=not out.is_terminal,
    )


def plural(count: int, noun: str, plural_form: str | None = None) -> str:
    """'1 record', '2 records'.

    >>> plural(1, "record"), plural(2, "record"), plural(0, "sample"), plural(3, "entry", "entries")
    ('1 record', '2 records', '0 samples', '3 entries')
    """
    return f"{count:,} {noun if count == 1 else (plural_form or noun + 's')}"
