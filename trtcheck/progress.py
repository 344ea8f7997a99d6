"""Progress for long steps (downloads, sessions and engine builds, bisection runs).

Library code announces steps with `step("...")`; nothing shows unless a front end opened a
`display`, and the CLI opens one only on a terminal (rich's live display is not for logs or
pipes, and NO_COLOR / non-TTY output stays plain).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

_ACTIVE: ContextVar[Any] = ContextVar("trtcheck_progress", default=None)


@contextlib.contextmanager
def display(console: Any) -> Iterator[None]:
    """Shows a spinner with the current step and elapsed time while the block runs.

    `console` None (output that is not a terminal) shows nothing.
    """
    if console is None or not console.is_terminal:
        yield
        return
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                        console=console, transient=True)
    token = _ACTIVE.set(progress)
    try:
        with progress:
            yield
    finally:
        _ACTIVE.reset(token)


@contextlib.contextmanager
def step(description: str) -> Iterator[None]:
    """Marks a long step; a no-op unless a `display` is open."""
    progress = _ACTIVE.get()
    if progress is None:
        yield
        return
    task = progress.add_task(description, total=None)
    try:
        yield
    finally:
        progress.remove_task(task)
