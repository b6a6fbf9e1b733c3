"""The exceptions anypool raises, and the remote traceback it attaches to a worker's errors.

This module is imported by workers too: it must stay free of anyio and trio.
"""

from __future__ import annotations

import pickle
import signal

__all__ = [
    "BrokenWorkerError",
    "InitializerError",
    "PoolClosedError",
    "RemoteError",
    "RemoteTraceback",
    "SerializationError",
    "UnsupportedError",
]


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker, formatted there as text.

    anypool sets it as the ``__cause__`` of the exception it re-raises in the caller, so the
    worker's frames (file, line, function) are printed above the caller's own.
    """

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        # Start on a fresh line so the printed traceback lines up under the class name.
        return "\n" + self.text.rstrip("\n")


class RemoteError(Exception):
    """An exception raised in a worker that cannot be delivered as itself.

    Raised in the caller when the worker's exception cannot be pickled or unpickled, and for
    ``BaseException`` subclasses such as ``SystemExit`` and ``KeyboardInterrupt``, which must not
    end the parent. Its ``__cause__`` is the :class:`RemoteTraceback`.

    Attributes:
        type_name: the qualified name of the original exception's type.
        message: ``str()`` of the original exception.
        traceback: the worker's formatted traceback.
    """

    def __init__(self, type_name: str, message: str, traceback: str) -> None:
        super().__init__(type_name, message, traceback)
        self.type_name = type_name
        self.message = message
        self.traceback = traceback

    def __str__(self) -> str:
        return f"{self.type_name}: {self.message}" if self.message else self.type_name


class BrokenWorkerError(RuntimeError):
    """The worker process running a call died before it answered.

    Raised for that call only; the pool replaces the worker and stays usable.

    Attributes:
        pid: the process id of the worker that died (``None`` where the backend does not
            tell: Ray).
        exitcode: its exit status as :mod:`multiprocessing` reports it: a negative number is the
            signal that killed it.
        signal_name: the name of that signal (``"SIGKILL"``, ``"SIGSEGV"``, ...), else ``None``.
    """

    def __init__(
        self, pid: int | None, exitcode: int | None, during: str, *, first_call: bool = False
    ) -> None:
        self.pid = pid
        self.exitcode = exitcode
        self.signal_name = _signal_name(exitcode)
        if self.signal_name is not None:
            how = f"was killed by {self.signal_name}"
        elif exitcode is None:
            how = "stopped answering" if pid is not None else "died"
        else:
            how = f"exited with code {exitcode}"
        # A cluster engine may not say which process ran the call.
        who = f"worker process {pid}" if pid is not None else "the worker process"
        message = f"{who} {how} during {during}"
        if first_call and exitcode == 1:
            # What multiprocessing's own start-up failures look like, the classic one included.
            message += (
                "; it had run no call before, so it may have failed while starting (its error is"
                " on stderr): under the spawn start method, a script that uses a pool needs an"
                ' `if __name__ == "__main__":` guard'
            )
        super().__init__(message)

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_broken_worker_error, (self.pid, self.exitcode, str(self)))


def _rebuild_broken_worker_error(
    pid: int | None, exitcode: int | None, message: str
) -> BrokenWorkerError:
    error = BrokenWorkerError.__new__(BrokenWorkerError)
    RuntimeError.__init__(error, message)
    error.pid, error.exitcode, error.signal_name = pid, exitcode, _signal_name(exitcode)
    return error


def _signal_name(exitcode: int | None) -> str | None:
    if exitcode is None or exitcode >= 0:
        return None
    try:
        return signal.Signals(-exitcode).name
    except ValueError:
        return f"signal {-exitcode}"


class InitializerError(RuntimeError):
    """The pool's ``initializer`` raised in a new worker, so the call could not run.

    Its ``__cause__`` is the initializer's exception, whose own ``__cause__`` is the
    :class:`RemoteTraceback` from the worker. The failed worker is gone; the pool starts a new one
    only when another call needs it.
    """


class SerializationError(pickle.PicklingError, TypeError):
    """An argument, a result or an exception could not be pickled or unpickled.

    The message names what failed (``argument 0``, ``keyword argument 'key'``, ``the result of
    fn``) and the type of the object. The worker involved is kept and the pool stays usable.
    """


class PoolClosedError(RuntimeError):
    """The pool no longer runs calls.

    Raised by ``run`` after ``close()`` or ``terminate()``, and by calls that were running or
    waiting for a worker when the pool was terminated.
    """


class UnsupportedError(NotImplementedError):
    """The pool's backend cannot do this (``pool.stream`` on a backend without streams, say).

    Raised when the feature is asked for, before any work starts.
    """


# Show these as ``anypool.X`` in tracebacks and pickle them by their public name.
for _cls in (
    BrokenWorkerError,
    InitializerError,
    PoolClosedError,
    RemoteError,
    RemoteTraceback,
    SerializationError,
    UnsupportedError,
):
    _cls.__module__ = "anypool"
del _cls


def raised_in_worker(error: BaseException) -> bool:
    """Whether ``error`` was raised by the user's code in a worker: its causes end in the
    worker's :class:`RemoteTraceback`."""
    cause = error.__cause__
    while cause is not None:
        if isinstance(cause, RemoteTraceback):
            return True
        cause = cause.__cause__
    return False
