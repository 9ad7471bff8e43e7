"""Typed errors. Each says what was expected, what was found, and what to do about it."""

from __future__ import annotations

from pathlib import Path


class MtbenchError(Exception):
    """Base class of every error mtbench raises on purpose.

    Args:
        problem: one line saying what went wrong.
        expected: what mtbench expected.
        found: what it found instead.
        fix: what the user can do.
    """

    def __init__(
        self, problem: str, *, expected: str | None = None, found: str | None = None, fix: str | None = None
    ) -> None:
        self.problem, self.expected, self.found, self.fix = problem, expected, found, fix
        lines = [problem]
        if expected is not None:
            lines.append(f"  expected: {expected}")
        if found is not None:
            lines.append(f"  found:    {found}")
        if fix is not None:
            lines.append(f"  fix:      {fix}")
        super().__init__("\n".join(lines))

    def details(self) -> dict[str, str | None]:
        """``expected``, ``found`` and ``fix``, to restate this error as another (``Other(where, problem, **e.details())``)."""
        return {"expected": self.expected, "found": self.found, "fix": self.fix}


class RegistryError(MtbenchError):
    """A registry lookup or registration failed."""


class UnknownNameError(RegistryError, KeyError):
    """A name is not registered; the message lists close matches."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return Exception.__str__(self)


class DuplicateNameError(RegistryError):
    """A name was registered twice."""


class PluginError(MtbenchError):
    """A method plugin could not be loaded or is malformed."""


class ConfigError(MtbenchError):
    """A configuration value or combination is invalid."""


class DatasetNotFoundError(MtbenchError):
    """A data set is not where it was looked for."""


class PathError(MtbenchError):
    """An error about one file or folder, named first in the message.

    Attributes:
        path: the offending file or folder.
    """

    def __init__(self, path: str | Path, problem: str, **kwargs: str | None) -> None:
        self.path = Path(path)
        super().__init__(f"{self.path}: {problem}", **kwargs)


class DataFormatError(PathError):
    """A file or folder of a data set does not have the expected format."""


class HeldOutTargetError(MtbenchError):
    """Code tried to read the targets of a task held out from training."""


class OutputError(MtbenchError):
    """An output folder (run folder, results store) cannot be created or written.

    Raised before any data is loaded or any training starts, so no run is lost to it.
    """


class UnsafeNameError(RegistryError):
    """A name that becomes part of a file or folder name (a method, a data set) is not of the safe form."""


class ResultFileError(PathError):
    """A result file (or a results folder) is missing, unreadable, malformed, or not the one that was published."""


class LeaderboardError(MtbenchError):
    """The leaderboard cannot be built or published as asked (e.g. a path that would leave its folder)."""


class SplitError(DataFormatError):
    """A split a layout needs (e.g. ``train``, ``val``) is missing or holds no samples.

    Raised when the data set is opened, so no verify, prepare or run starts on it. ``path`` names the
    folder or list file that should hold the split.
    """


class SweepSpecError(ConfigError):
    """A sweep spec file (``mtbench sweep SPEC``) is unreadable or invalid.

    Attributes:
        path: the spec file.
        key: the offending key, dotted as in the file (``methods.fixed-lambda.lam``, ``datasets[0].unseen``).
    """

    def __init__(self, path: str | Path, key: str, problem: str, **kwargs: str | None) -> None:
        self.path, self.key = Path(path), key
        super().__init__(f"{self.path}: {key}: {problem}", **kwargs)
