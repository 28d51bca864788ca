"""become_subreaper(), on its own: the pytest plugin calls it at start-up
and must not pay for the rest of the clean-up contract (lifecycle)."""

from __future__ import annotations

from typing import Any, Callable

PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Make this process a child subreaper (prctl PR_SET_CHILD_SUBREAPER):
    orphans of our descendants are re-parented to us, not to PID 1 (which on
    some machines reaps only every second or two), so we can reap them.
    False where prctl is not available."""
    try:
        prctl = _libc_function("prctl")
        return int(prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (ImportError, OSError, AttributeError):
        return False


def _libc_function(name: str) -> Callable[..., Any]:
    """A C function of this process's own libraries, taking and returning
    ints, through _ctypes, the C core of ctypes. Importing ctypes itself
    costs some 9 M instructions (2 ms) at every start of a pytest run with
    the plugin; this, about a quarter of that. ctypes serves where the core does
    not offer what this asks of it."""
    try:
        import _ctypes

        class CInt(_ctypes._SimpleCData):   # ctypes.c_int
            _type_ = "i"

        class CFunction(_ctypes.CFuncPtr):   # what ctypes.CDLL(None, use_errno=True) makes
            _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
            _restype_ = CInt

        # dlopen(NULL): the program and the libraries it has loaded, as CDLL(None).
        handle = _ctypes.dlopen(None)  # type: ignore[arg-type]
        function: Callable[..., Any] = CFunction(_ctypes.dlsym(handle, name))
        return function
    except (ImportError, AttributeError, TypeError):
        import ctypes

        function = getattr(ctypes.CDLL(None, use_errno=True), name)
        return function
