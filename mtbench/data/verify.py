"""``mtbench data verify``: read every sample of every split through the real reader."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from mtbench.data.reader import DatasetIdentity, Reader
from mtbench.errors import DataFormatError


@dataclass
class VerifyReport:
    """What `verify` found: sample counts per split and the distinct problems."""

    identity: DatasetIdentity
    counts: dict[str, int]
    targets: tuple[str, ...]
    errors: list[DataFormatError] = field(default_factory=list)
    truncated: bool = False

    @property
    def ok(self) -> bool:
        return not self.errors


def verify(reader: Reader, *, max_errors: int = 20, progress: Callable[[int, int], None] | None = None) -> VerifyReport:
    """Read every sample with every target the layout provides; collect distinct errors.

    A missing folder would fail for every sample: errors with the same message are kept once.
    """
    identity = reader.identity(content=False)
    targets = reader.targets()
    try:  # readers check when opened; this also covers a reader opened some other way
        reader.check_splits()
    except DataFormatError as error:
        return VerifyReport(identity, {}, targets, [error])
    counts = {split: reader.num_samples(split) for split in reader.splits()}
    report = VerifyReport(identity, counts, targets)
    if not counts:
        report.errors.append(
            DataFormatError(reader.root, "no split found", expected=reader.describe(), found="no samples")
        )
        return report
    seen: set[str] = set()
    total, done = sum(counts.values()), 0
    for split, count in counts.items():
        if count == 0:
            report.errors.append(
                DataFormatError(reader.root, f"split {split!r} is empty", expected="at least one sample")
            )
        for index in range(count):
            for target_set in ((), *((t,) for t in targets)):
                try:
                    reader.read(split, index, target_set)
                except DataFormatError as error:
                    if str(error) not in seen:
                        seen.add(str(error))
                        report.errors.append(error)
            done += 1
            if progress:
                progress(done, total)
            if len(report.errors) >= max_errors:
                report.truncated = True
                return report
    return report
