"""The reader interface every on-disk layout implements, the registry of layouts, and data-set identity.

A reader registers itself: ``@register_layout`` on its class (in its own module) adds it to `LAYOUTS` under its
``layout`` name. `mtbench.data.layouts` imports the built-in reader modules, readers of installed packages
(entry-point group ``mtbench.layouts``) and detects a folder's layout.
"""

from __future__ import annotations

import inspect
import json
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Collection, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import numpy as np

from mtbench import catalog
from mtbench.data.io import fingerprint_files, stored_size
from mtbench.errors import DataFormatError, DatasetNotFoundError, PluginError, SplitError, UnknownNameError
from mtbench.registry import Registry

if TYPE_CHECKING:
    from mtbench.specs import TaskKind

#: Written at the top of every synthetic data set; readers use it to tag samples as synthetic.
SYNTH_MANIFEST = "mtbench-synthetic.json"

Sample = dict[str, np.ndarray]


@dataclass(frozen=True)
class DatasetIdentity:
    """Who a data set is: recorded in every result so synthetic data never passes for real."""

    dataset: str
    family: str
    layout: str
    root: str
    synthetic: bool
    generator: dict[str, Any] | None = None
    fingerprint: str | None = None
    fingerprint_kind: str = field(default="none")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Reader(ABC):
    """Reads one on-disk layout of a data family into canonical samples.

    Canonical sample arrays (whatever the layout stores), each target as its task kind declares (`kind_of`):
        ``image``: float32 (3, H, W) in [0, 1];
        label maps (kind ``segmentation``): int64 (H, W), -1 = ignore;
        ``depth``: float32 (1, H, W), 0 = invalid; ``normal``: float32 (3, H, W), all-zero = invalid;
        ``edge``: float32 (1, H, W) in {0, 1}; ``attr:<Name>`` (kind ``binary``): float32 scalar in {0, 1}.

    Only the targets a caller asks for are read: a held-out task's files are never opened.
    Subclasses set the class attributes, implement the abstract methods and call `check_splits` at the
    end of their constructor, so a data set with a missing or empty split cannot be opened. A concrete reader
    registers itself with ``@register_layout``.
    """

    layout: ClassVar[str]
    family: ClassVar[str]
    title: ClassVar[str]
    #: target name -> the kind of file it is read from (two targets sharing a source leak each other)
    target_sources: ClassVar[dict[str, str]]
    #: target name -> the name of its task kind (`mtbench.catalog.kind`), which says how the target is typed,
    #: cached and drawn (`kind_of`); one entry per target of ``target_sources`` (checked by `register_layout`)
    target_kinds: ClassVar[dict[str, str]] = {}
    #: images are 8-bit on disk (JPEG/PNG), so a cache may store them as uint8 without loss
    stores_uint8_images: ClassVar[bool] = False
    #: splits the layout must hold, each with at least one sample (checked when the data set is opened)
    required_splits: ClassVar[tuple[str, ...]] = ("train",)
    #: integer label map target -> the inclusive range ``(lowest, highest)`` of its values (-1 = ignore
    #: included where it occurs); a cache stores the map in the narrowest integer type holding that range
    label_values: ClassVar[dict[str, tuple[int, int]]] = {}
    #: target -> ``(source target, derivation)`` where the target is a function of another target of the same
    #: sample: a lookup table (``table[source]``, numpy indexing) or the name of a function in `DERIVATIONS`.
    #: `read` derives it from the source's array when both are asked for; a cache stores only the source.
    derived_targets: ClassVar[dict[str, tuple[str, np.ndarray | str]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A subclass that overrides `read` must take its ``image`` keyword: target-only passes (the meta-test,
        streamed target reads) call ``read(..., image=False)``; refused when the class is defined, not mid-run."""
        super().__init_subclass__(**kwargs)
        read = cls.__dict__.get("read")
        if read is None:
            return
        parameters = inspect.signature(read).parameters
        if "image" not in parameters and not any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
            raise PluginError(
                f"reader {cls.__qualname__} overrides read() without its image keyword",
                expected="read(self, split, index, targets=(), *, image=True), returning no 'image' for image=False",
                found=f"read{inspect.signature(read)}",
                fix="add the image keyword, or implement _read_image/_read_target and keep Reader.read",
            )

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise DatasetNotFoundError(
                f"no data set folder at {self.root}",
                expected=f"a folder in the {self.title} layout",
                found="nothing" if not self.root.exists() else "a file",
                fix="check the path, or create a synthetic stand-in with `mtbench data synth`",
            )
        if not self.detect(self.root):
            raise DataFormatError(
                self.root,
                f"not a {self.title} folder",
                expected=self.describe(),
                found=", ".join(sorted(p.name for p in self.root.iterdir())[:10]) or "an empty folder",
                fix="point --root at the top folder of the data set",
            )

    # --- what subclasses provide -------------------------------------------------------------
    @classmethod
    @abstractmethod
    def detect(cls, root: Path) -> bool:
        """Whether ``root`` looks like this layout (cheap: folder names only)."""

    @classmethod
    def family_at(cls, root: Path) -> str:
        """The data family of the folder ``root`` (which `detect` accepted): the class's ``family``, or for a
        layout that serves every family (``family = "*"``) the one the folder holds."""
        return cls.family

    @classmethod
    @abstractmethod
    def describe(cls) -> str:
        """One line describing the expected folder structure."""

    @abstractmethod
    def splits(self) -> tuple[str, ...]:
        """Split names present on disk, canonical spelling (``train``, ``val``, ``test``)."""

    @abstractmethod
    def sample_ids(self, split: str) -> list[str]:
        """Ids of the samples of ``split`` in a fixed order."""

    @abstractmethod
    def _read_image(self, split: str, index: int) -> np.ndarray:
        """Canonical image of one sample."""

    @abstractmethod
    def _read_target(self, split: str, index: int, target: str) -> np.ndarray:
        """Canonical array of one target of one sample."""

    def locate(self, split: str, index: int, target: str) -> str:
        """Where ``target`` of a sample is stored (a file, or a row and column), for error messages."""
        return f"{self.root} ({split} sample {self.sample_ids(split)[index]}, {target})"

    def split_source(self, split: str) -> Path:
        """The folder or list file that holds (or should hold) ``split``, for error messages."""
        return self.root

    def sample_files(self, split: str, index: int) -> tuple[Path, dict[str, Path]] | None:
        """``(image file, {target: file})`` of a sample, used to tell which file has the wrong size and, when
        the image is not read (``read(..., image=False)``), to learn its size from the file's header; None
        where samples are not one file per array, or where the image is resized when read (its file's size
        is then not the sample's)."""
        return None

    @abstractmethod
    def files(self) -> Iterable[Path]:
        """Every data file of the set (for fingerprints)."""

    # --- shared behaviour --------------------------------------------------------------------
    def targets(self) -> tuple[str, ...]:
        return tuple(self.target_sources)

    def kind_of(self, target: str) -> TaskKind:
        """The registered task kind of ``target`` (`target_kinds`): its dtype, cache storage, ignore value and
        drawing."""
        self.require_targets((target,), f"the {self.title} layout")
        name = self.target_kinds.get(target)
        if name is None:
            raise PluginError(
                f"reader {type(self).__name__} ({self.layout}) declares no kind for its target {target!r}",
                expected="an entry per target in target_kinds, e.g. {'depth': 'depth'}",
                found=", ".join(sorted(self.target_kinds)) or "no target_kinds",
                fix=f"add {target!r} to {type(self).__name__}.target_kinds",
            )
        try:
            return catalog.kind(name)
        except UnknownNameError as error:
            raise UnknownNameError(
                f"reader {type(self).__name__} ({self.layout}) names the unknown task kind {name!r} for {target!r}",
                **error.details(),
            ) from None

    def num_samples(self, split: str) -> int:
        return len(self.sample_ids(split))

    def check_splits(self) -> None:
        """Raise `SplitError` naming the folder or list file of a required split that is missing, or of
        any split that holds no samples. Cheap: only lists sample ids."""
        present = self.splits()
        for split in dict.fromkeys((*self.required_splits, *present)):
            where = self.split_source(split)
            if split not in present:
                raise SplitError(
                    where,
                    f"the {split} split is missing",
                    expected=f"splits {', '.join(self.required_splits)} in the {self.title} layout ({self.describe()})",
                    found=f"only {', '.join(present)}" if present else "no split at all",
                    fix=f"restore the {split} split from the original download, or re-create the data set",
                )
            if self.num_samples(split) == 0:
                raise SplitError(
                    where,
                    f"the {split} split has no samples",
                    expected="at least one sample",
                    found="0 samples",
                    fix=f"restore the {split} split from the original download, or re-create the data set",
                )

    def check_split(self, split: str) -> None:
        if split not in self.splits():
            raise DatasetNotFoundError(
                f"split {split!r} not found in {self.root}", expected=" or ".join(self.splits()), found=repr(split)
            )

    def require_targets(self, targets: Collection[str], holder: str) -> None:
        """A `DataFormatError` naming the first of ``targets`` this reader does not provide (``holder`` has none)."""
        unknown = [t for t in targets if t not in self.target_sources]
        if unknown:
            raise DataFormatError(
                self.root, f"{holder} has no target {unknown[0]!r}", expected=", ".join(self.targets()),
                found=", ".join(unknown),
            )

    def read(self, split: str, index: int, targets: Collection[str] = (), *, image: bool = True) -> Sample:
        """The image and the requested targets of sample ``index`` of ``split``; nothing else is read.

        ``image=False``: the image is neither read nor decoded and the sample has no ``image`` key (passes
        that need targets only). Every target map must still have the image's size: where `sample_files`
        names the image file, its size comes from the file's header (no pixel is decoded); otherwise (or
        when the header cannot be read) the requested targets are only checked against each other.
        A derived target (`derived_targets`) whose source is requested too is computed from the source's
        array, so the source's files are read once.
        """
        self.require_targets(targets, f"the {self.title} layout")
        sample: Sample = {}
        if image:
            sample["image"] = self._read_image(split, index)
            size: tuple[int, ...] | None = tuple(sample["image"].shape[1:])
        else:
            size = self._image_file_size(split, index)
        wanted = list(dict.fromkeys(targets))
        derived_late = [t for t in wanted if self.derived_targets.get(t, ("",))[0] in wanted]
        first: str | None = None  # the target whose size the others are checked against (no image size known)
        for target in [t for t in wanted if t not in derived_late] + derived_late:  # sources before derived
            value = self._derived(target, sample)
            if value is None:
                value = self._read_target(split, index, target)
            if value.ndim >= 2:
                if size is None:
                    size, first = tuple(value.shape[-2:]), target
                elif tuple(value.shape[-2:]) != size:
                    if first is not None:
                        raise self._targets_disagree(split, index, first, size, target, value.shape[-2:])
                    raise self._size_mismatch(split, index, target, targets, size, value.shape[-2:])
            sample[target] = value
        return {key: sample[key] for key in (["image"] if image else []) + wanted}

    def _derived(self, target: str, sample: Sample) -> np.ndarray | None:
        """``target`` computed from its source's array in ``sample``; None if it is not derived or its source
        is not there."""
        derivation = self.derived_targets.get(target)
        if derivation is None or derivation[0] not in sample:
            return None
        return derive(derivation[1], sample[derivation[0]])

    def _image_file_size(self, split: str, index: int) -> tuple[int, int] | None:
        """``(H, W)`` of a sample's image from its file's header (`sample_files`); None where unknown."""
        files = self.sample_files(split, index)
        return stored_size(files[0]) if files is not None else None

    def _targets_disagree(
        self, split: str, index: int, first: str, first_size: tuple[int, ...], target: str, size: tuple[int, ...]
    ) -> DataFormatError:
        """The error for two targets of different sizes, read without the image (whose size is unknown)."""
        sample_id = self.sample_ids(split)[index]
        return DataFormatError(
            self.locate(split, index, target),
            f"{target} of sample {sample_id} ({split}) does not match the size of its {first}",
            expected=_size_text(first_size),
            found=_size_text(size),
            fix="every map of a sample has its image's size: restore the wrong one from the original download",
        )

    def _size_mismatch(
        self,
        split: str,
        index: int,
        target: str,
        targets: Collection[str],
        image_size: tuple[int, ...],
        target_size: tuple[int, ...],
    ) -> DataFormatError:
        """The error for a target whose size differs from its image (decoded, or from its file's header),
        blaming the file most likely wrong.

        Where the layout stores one file per array (`sample_files`), the sizes of the requested targets'
        files (from their headers; other targets' files stay unopened) and the image size of a few other
        samples decide: targets that agree with each other and with the other samples blame the image;
        otherwise the target that disagrees is blamed. Runs only on a mismatch.
        """
        sample_id = self.sample_ids(split)[index]
        image_text, found = _size_text(image_size), _size_text(target_size)

        def blame_target(fix: str) -> DataFormatError:
            return DataFormatError(
                self.locate(split, index, target),
                f"{target} of sample {sample_id} ({split}) does not match its image size",
                expected=image_text,
                found=found,
                fix=fix,
            )

        def blame_image(why: str) -> DataFormatError:
            return DataFormatError(
                image_file,
                f"the image of sample {sample_id} ({split}) is {image_text}, but {why}",
                expected=found,
                found=image_text,
                fix="restore this image from the original download (it was resized or replaced)",
            )

        files = self.sample_files(split, index)
        if files is None:
            return blame_target(f"re-create this file at {image_text}, or the image if it is the one resized")
        image_file, target_files = files
        paths = dict.fromkeys(target_files[t] for t in (target, *targets) if t in target_files)
        sizes = {path: stored_size(path) for path in paths}
        sizes[target_files[target]] = (target_size[0], target_size[1])  # decoded already: no header needed
        known = [size for size in sizes.values() if size is not None]
        others = self._typical_image_size(split, index)
        this = sizes[target_files[target]]
        if len(set(known)) == 1:  # the requested targets agree on one size
            if others == this:
                return blame_image(f"its targets are {found}, like the other samples of {split}")
            if others == image_size:
                which = "this file" if len(known) == 1 else "the target files of this sample"
                return blame_target(
                    f"the image and the other samples of {split} are {image_text}: restore {which} "
                    "from the original download"
                )
            if len(known) > 1:
                return blame_image(f"its targets agree on {found}")
            return blame_target(f"re-create this file at {image_text}, or the image if it is the one resized")
        votes = Counter(known)
        leaders = [size for size, count in votes.items() if count == max(votes.values())]
        consensus = others if others in leaders else image_size if image_size in leaders else leaders[0]
        if this != consensus:
            return blame_target(f"re-create this file at {_size_text(consensus)}, the size of most files of the sample")
        return blame_image(f"most of its target files are {found}")

    def _typical_image_size(self, split: str, index: int) -> tuple[int, int] | None:
        """The most common image size among a few other samples of ``split`` (headers only)."""
        ids = self.sample_ids(split)
        picks = dict.fromkeys(i for i in (0, 1, 2, len(ids) // 2, len(ids) - 1) if 0 <= i < len(ids) and i != index)
        sizes = []
        for other in picks:
            files = self.sample_files(split, other)
            size = stored_size(files[0]) if files else None
            if size is not None:
                sizes.append(size)
        return Counter(sizes).most_common(1)[0][0] if sizes else None

    def synthetic_manifest(self) -> dict[str, Any] | None:
        path = self.root / SYNTH_MANIFEST
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise DataFormatError(path, f"unreadable synthetic-data manifest: {exc}") from None

    def fingerprint(self, *, content: bool = True) -> str:
        return fingerprint_files(self.root, self.files(), content=content)

    def identity(self, *, fingerprint: str | None = None, content: bool = True) -> DatasetIdentity:
        """Identity of this data set; computes a fingerprint unless one is given."""
        manifest = self.synthetic_manifest()
        kind = "given" if fingerprint else ("sha256-content" if content else "sha256-listing")
        return DatasetIdentity(
            dataset=manifest["dataset"] if manifest else self.family,
            family=self.family,
            layout=self.layout,
            root=str(self.root.resolve()),
            synthetic=manifest is not None,
            generator=manifest,
            fingerprint=fingerprint or self.fingerprint(content=content),
            fingerprint_kind=kind,
        )


#: every registered on-disk layout: layout name -> reader class (`register_layout`; read through
#: `mtbench.data.layouts.layouts`, which loads the built-in and installed readers first)
LAYOUTS: Registry[type[Reader]] = Registry("layout")
R = TypeVar("R", bound=type[Reader])


def register_layout(cls: R) -> R:
    """Class decorator: register a concrete reader under its ``layout`` name.

    Checked here, when the class is defined: it is a concrete `Reader` with ``layout``, ``family`` and ``title``,
    and a class that lists its targets (``target_sources``) names the kind of every one (``target_kinds``).
    A name registered twice is a `DuplicateNameError`.
    """
    if not (isinstance(cls, type) and issubclass(cls, Reader)):
        raise PluginError(
            f"@register_layout on {cls!r}, which is not a reader class",
            expected="a subclass of mtbench.data.reader.Reader",
            found=type(cls).__name__,
        )
    missing = [a for a in ("layout", "family", "title") if not isinstance(getattr(cls, a, None), str)]
    if missing or inspect.isabstract(cls):
        abstract = sorted(getattr(cls, "__abstractmethods__", ()))
        raise PluginError(
            f"reader {cls.__qualname__} cannot be registered as a layout",
            expected="class attributes layout, family and title (strings) and every abstract method implemented",
            found=", ".join([f"no {a}" for a in missing] + [f"abstract {m}" for m in abstract]),
            fix="set the attributes and implement the methods Reader declares abstract",
        )
    sources = getattr(cls, "target_sources", None)
    if isinstance(sources, dict):
        undeclared = [t for t in sources if t not in cls.target_kinds]
        if undeclared:
            raise PluginError(
                f"reader {cls.__qualname__} ({cls.layout}) declares no kind for {', '.join(map(repr, undeclared))}",
                expected="target_kinds naming the task kind of every target of target_sources",
                found=", ".join(f"{t}: {k}" for t, k in cls.target_kinds.items()) or "no target_kinds",
                fix="add the targets to target_kinds (`mtbench ls kinds` lists the kinds)",
            )
    LAYOUTS.register(cls.layout, cls)
    return cls


#: derivations a reader may name in `Reader.derived_targets` (a cache records the name and calls the same function)
DERIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {}


def derive(how: np.ndarray | str, source: np.ndarray) -> np.ndarray:
    """A derived target from its source's canonical array: ``how[source]`` for a lookup table, else the
    function `DERIVATIONS` names ``how``."""
    if isinstance(how, str):
        return DERIVATIONS[how](source)
    return how[source]


def _size_text(size: Iterable[int]) -> str:
    return "×".join(map(str, size))


def to_chw_image(array: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 or float -> contiguous float32 (3, H, W) in [0, 1]."""
    if array.dtype == np.uint8:
        array = array.astype(np.float32) / 255.0
    return np.ascontiguousarray(np.moveaxis(array.astype(np.float32, copy=False), -1, 0))


def label_edges(labels: np.ndarray) -> np.ndarray:
    """Semantic boundaries: 1 where a pixel's label differs from its right or lower neighbour.

    Ignore pixels (-1) never create a boundary. Returns float32 (1, H, W).
    """
    edge = np.zeros(labels.shape, dtype=bool)
    valid = labels >= 0
    horizontal = (labels[:, 1:] != labels[:, :-1]) & valid[:, 1:] & valid[:, :-1]
    vertical = (labels[1:, :] != labels[:-1, :]) & valid[1:, :] & valid[:-1, :]
    edge[:, :-1] |= horizontal
    edge[:-1, :] |= vertical
    return edge[None].astype(np.float32)


DERIVATIONS["label_edges"] = label_edges
