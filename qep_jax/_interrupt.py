"""Ctrl-C that Python drops is not lost: long runs stop at their next checkpoint instead."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator


class CtrlC:
    """SIGINT handler that raises KeyboardInterrupt, as Python's does, and remembers the press.

    Python drops an exception raised while a gc callback or ``__del__`` runs and prints "Exception
    ignored in ...". jax registers such a callback (``_xla_gc_callback``), and a Ctrl-C during a
    chunk's compilation sometimes landed there: ``qep-jax run`` went on to exit 0 with that
    traceback (3 of 40 presses at 0.05-0.5 s into the first compilation). A dropped press is sent
    again 50 ms later, and :meth:`check` raises it at the next checkpoint (after each chunk of a
    run) should that be dropped too.
    """

    def __init__(self):
        self.pressed = False
        self._resend = None

    def __call__(self, signum, frame):
        self.pressed = True
        raise KeyboardInterrupt

    def check(self) -> None:
        if self.pressed:
            self.cancel()  # a late re-send would interrupt the interrupt's own report
            raise KeyboardInterrupt

    def unraisable(self, default, hook_args) -> None:
        if not (self.pressed and issubclass(hook_args.exc_type, KeyboardInterrupt)):
            return default(hook_args)
        if self._resend is None:  # once: the checkpoint covers a second drop
            self._resend = threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGINT))
            self._resend.daemon = True
            self._resend.start()

    def cancel(self) -> None:
        if self._resend is not None:
            self._resend.cancel()


@contextlib.contextmanager
def reraise_dropped_ctrl_c() -> Iterator[None]:
    """Raise, at the end of the block, a KeyboardInterrupt that Python dropped inside it.

    For ``qep_jax``'s own imports, before any handler of ours can be installed: ``import jax``
    registers ``_xla_gc_callback``, and a Ctrl-C landing in it while the package was imported was
    dropped ("Exception ignored in ...") and ``qep-jax run`` went on to finish and exit 0. Other unraisable exceptions go to the previous
    ``sys.unraisablehook``, which is put back at the end (if something replaced ours meanwhile,
    ours passes everything on from then on). Neither signals nor anything else is changed.
    """
    dropped = []
    active = True
    previous = sys.unraisablehook

    def hook(hook_args) -> None:
        if active and hook_args.exc_type is not None and issubclass(hook_args.exc_type, KeyboardInterrupt):
            dropped.append(hook_args.exc_type)
            return
        previous(hook_args)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        active = False
        if sys.unraisablehook is hook:
            sys.unraisablehook = previous
    if dropped:
        raise KeyboardInterrupt


@contextlib.contextmanager
def remember_ctrl_c() -> Iterator[CtrlC]:
    """Install :class:`CtrlC` for the duration of a run, in place of Python's own SIGINT handler
    only: an ignored SIGINT (a job started in the background by a script) stays ignored, and
    another program's handler stays in place. Nested uses share the outer handler. Signals are
    for the main thread only; elsewhere the yielded handler is inert (``check`` never raises).
    """
    current = signal.getsignal(signal.SIGINT) if threading.current_thread() is threading.main_thread() else None
    if isinstance(current, CtrlC):
        yield current
        return
    ctrl_c = CtrlC()
    if current is not signal.default_int_handler:
        yield ctrl_c
        return
    previous_hook = sys.unraisablehook
    signal.signal(signal.SIGINT, ctrl_c)
    sys.unraisablehook = lambda hook_args: ctrl_c.unraisable(previous_hook, hook_args)
    try:
        yield ctrl_c
    finally:
        ctrl_c.cancel()
        signal.signal(signal.SIGINT, current)
        sys.unraisablehook = previous_hook
