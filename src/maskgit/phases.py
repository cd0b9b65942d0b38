"""Long work that says which phase it is in and can be stopped between two pieces of it.

Code that runs long (the pipeline's encode, paste and step pictures; the seamless blend's
sweeps; the web server's PNG encoding) calls `checkpoint(phase)` at the start of a phase and
`checkpoint()` inside its loops. Nothing happens unless the thread runs inside `watched(hook)`:
then each checkpoint calls `hook(phase)`, which may record the phase (the web page shows it)
and raise to stop the work (a cancelled job, a server stopping on Ctrl-C). The hook is per
thread, so the library's signatures stay as they are. Imports nothing of the package.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

PhaseHook = Callable[[str | None], None]
DECODING_PHASE = "decoding"  # the decoding steps start (a watcher counts them by its on_step)

_local = threading.local()


def checkpoint(phase: str | None = None) -> None:
    """Report `phase` (None: the same phase goes on) to this thread's hook, if any; the hook
    may raise to stop the work here."""
    hook = getattr(_local, "hook", None)
    if hook is not None:
        hook(phase)


@contextmanager
def watched(hook: PhaseHook) -> Iterator[None]:
    """Within the block, `checkpoint` calls in this thread go to `hook`."""
    previous = getattr(_local, "hook", None)
    _local.hook = hook
    try:
        yield
    finally:
        _local.hook = previous
