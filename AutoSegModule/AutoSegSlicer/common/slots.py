"""Qt slots that always end in a handled state: a message for the user and a usable panel.

A slot connected to a widget signal or a QTimer runs inside Qt's event loop. An exception escaping it is
only printed to the Python console: the user sees nothing, and whatever the slot had half-changed stays (a
disabled button, a running timer, a wait cursor). `guarded` wraps a slot so that any exception becomes a
message box naming what failed, after the owner's recovery method has put the panel back.

Expected failures get a sentence written for the user (`describe`): an AutoSegError says what to do; a pip or
PyTorch installation that fails (``subprocess.CalledProcessError``) or that the user declined
(``slicer.packaging.pip_ensure`` raises ``RuntimeError("User declined package installation")``, Slicer 5.12
Base/Python/slicer/packaging.py) says so. Anything else is reported as an unexpected error with its
traceback in the message's details.

PythonQt calls a Python slot with as many of the signal's arguments as the slot's code accepts (all of them
when it takes ``*args``). The wrapper takes ``*args`` and passes on only as many as the wrapped slot
accepts, so ``clicked(bool)`` still reaches ``def onApply(self)``.
"""
from __future__ import annotations

import functools
import inspect
import logging
import subprocess
import traceback

log = logging.getLogger(__name__)

#: Slots whose recovery is running (GUI thread only): a failure inside a recovery is logged, not recovered.
_recovering: list = []

#: The message ``slicer.packaging.pip_ensure`` raises when the user declines (Slicer 5.12+).
PIP_DECLINED = "User declined package installation"


def describe(exc: BaseException, what: str) -> str:
    """The message shown for ``exc`` raised while doing ``what`` (e.g. "Segmentation")."""
    from AutoSegLib.errors import AutoSegError

    if isinstance(exc, AutoSegError):
        return str(exc)
    if isinstance(exc, RuntimeError) and PIP_DECLINED in str(exc):
        return f"{what}: the Python packages AutoSeg needs were not installed (installation declined)."
    if isinstance(exc, subprocess.CalledProcessError):
        cmd = exc.cmd if isinstance(exc.cmd, str) else " ".join(str(c) for c in (exc.cmd or []))
        return (f"{what}: installing Python packages failed (exit code {exc.returncode}: {cmd}). Check the internet "
                f"connection (or the proxy settings) and the Python console for pip's message, then try again.")
    return (f"{what} failed with an unexpected error: {type(exc).__name__}: {exc}\n\nThe panel was reset; the "
            f"details below (also in the Python console) help to report the problem.")


def _accepted_positional(fn) -> int | None:
    """How many positional arguments after ``self`` ``fn`` accepts; None when it takes ``*args``."""
    params = list(inspect.signature(fn).parameters.values())[1:]
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return None
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)


def show_error(text: str, details: str = "") -> None:
    """A modal error message (``slicer.util.errorDisplay``); logged only when no display is possible."""
    import slicer

    try:
        slicer.util.errorDisplay(text, windowTitle="AutoSeg", detailedText=details)
    except Exception:  # no GUI (tests without a display): the log still has it
        log.exception("could not show the error message: %s", text)


def guarded(what: str, recover: str = "recover"):
    """Decorate a slot method: any exception ends in ``self.<recover>()`` and a message for the user.

    Parameters
    ----------
    what : str
        What the slot does, for the message ("Segmentation", "Adding the model").
    recover : str
        Name of the owner's method that restores a usable panel (called before the message is shown, so
        the panel is usable while the message is open). A failing recovery is logged, never raised.
    """
    def wrap(slot):
        accepted = _accepted_positional(slot)

        @functools.wraps(slot)
        def run(self, *args):
            if accepted is not None:
                args = args[:accepted]
            try:
                return slot(self, *args)
            except Exception as exc:
                log.exception("%s failed", what)
                if _recovering:
                    # A guarded slot called by a recovery (recover -> setBusy -> _updateButtons) failed too: the
                    # outer guard shows the message; recovering again here would recurse without end.
                    return None
                details = traceback.format_exc()
                _recovering.append(what)
                try:
                    getattr(self, recover)()
                except Exception:
                    log.exception("recovering after '%s' failed", what)
                finally:
                    _recovering.pop()
                show_error(describe(exc, what), details)
                return None

        run.guarded_what = what
        return run
    return wrap


def restore_cursor() -> None:
    """Undo every override cursor (a slot that raised inside ``slicer.util.WaitCursor`` may leave one)."""
    import qt

    for _ in range(32):  # bounded: never loop forever on a misbehaving stack
        if qt.QApplication.overrideCursor() is None:
            return
        qt.QApplication.restoreOverrideCursor()
