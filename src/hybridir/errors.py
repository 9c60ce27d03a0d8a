"""Known user errors: input or setup the user can fix, reported by `hybridir` in one line (exit 2).

Any other exception is a bug and keeps its traceback. The subclasses also derive from the
builtin type such code raised before, so callers that catch (or tests that expect) it still do.
"""
from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input or setup; the message names the file or field and the fix."""


class MissingInput(UserError, FileNotFoundError):
    """A required file or directory is absent (usually: run the stage that makes it)."""


class BadInput(UserError, ValueError):
    """An input file, parameter or argument holds something the stage cannot use."""


class CannotRun(UserError, RuntimeError):
    """The stage cannot go on for a reason outside the code: a package, the network, a diverged run."""
