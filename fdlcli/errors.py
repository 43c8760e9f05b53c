"""The errors fdl reports to users as one line.

Everything a user can cause (a typo in an override, a missing dataset, a foreign checkpoint) raises a
subclass of :class:`FdlError`; the CLI prints its message on one line and exits with ``exit_code``.
Anything else is a bug and is reported as such (with the traceback behind ``--debug``).
"""

from __future__ import annotations


class FdlError(Exception):
    """An error caused by the user's input or environment, reported without a traceback."""

    exit_code = 1


class UsageError(FdlError):
    """Bad command-line input: unknown experiment, key or value (exit code 2, like Click)."""

    exit_code = 2


class ConfigError(UsageError):
    """A configuration that cannot be composed or does not validate."""


class UnknownExperimentError(UsageError):
    pass


class RunDirError(FdlError):
    """A path that is not a usable fdl run directory."""


class RunLockedError(RunDirError):
    """Another process is training this run (it holds the run's lock)."""


class CheckpointError(FdlError):
    """A missing, corrupt or foreign checkpoint."""


class DataUnavailableError(FdlError):
    """A dataset that can be reached neither on the Hub nor in a local mirror."""


class TrainingDiverged(FdlError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class TrainingInterrupted(FdlError):
    """Ctrl-C or SIGTERM: a checkpoint was saved and the run can be resumed."""

    exit_code = 130


class MissingDependencyError(FdlError):
    """A feature needs an optional package (an extra of pyproject.toml) that is not installed."""
