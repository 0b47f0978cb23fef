"""Problems found in a dataset, and how strict and lenient loaders react to them.

A problem has a kind (one per bad-input case the checker knows), a severity and a
message naming the file and the offending value. Strict loaders raise
:class:`DataProblemError` on the first error; lenient loaders skip the sample, warn
once per kind and count it in a :class:`ProblemLog`.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections import Counter
from dataclasses import dataclass, field

from ecom2f.errors import UserError

logger = logging.getLogger("ecom2f.data")


class Severity(str, enum.Enum):
    ERROR = "error"  # the sample cannot be used as it is: strict raises, lenient skips
    WARNING = "warning"  # the loader repairs it (e.g. converts CMYK to RGB): never skipped


class ProblemKind(str, enum.Enum):
    UNREADABLE_IMAGE = "unreadable_image"
    MISSING_IMAGE = "missing_image"
    MISSING_ANNOTATION_FILE = "missing_annotation_file"
    SIZE_MISMATCH = "size_mismatch"
    SEGMENT_NOT_IN_JSON = "segment_in_png_not_in_json"
    SEGMENT_NOT_IN_PNG = "segment_in_json_not_in_png"
    UNKNOWN_CATEGORY = "unknown_category"
    DUPLICATE_ID = "duplicate_id"
    ZERO_AREA_SEGMENT = "zero_area_segment"
    AREA_MISMATCH = "area_mismatch"
    EMPTY_IMAGE = "empty_image"
    LABEL_OUT_OF_RANGE = "label_out_of_range"
    BAD_ANNOTATION = "bad_annotation"
    # Repaired on load, reported by the checker as warnings.
    GRAYSCALE_IMAGE = "grayscale_image"
    RGBA_IMAGE = "rgba_image"
    CMYK_IMAGE = "cmyk_image"
    HIGH_BIT_DEPTH_IMAGE = "high_bit_depth_image"
    PALETTE_IMAGE = "palette_image"
    EXIF_ROTATION = "exif_rotation"
    NON_CONTIGUOUS_LABELS = "non_contiguous_labels"


WARNING_KINDS = frozenset(
    {
        ProblemKind.GRAYSCALE_IMAGE,
        ProblemKind.RGBA_IMAGE,
        ProblemKind.CMYK_IMAGE,
        ProblemKind.HIGH_BIT_DEPTH_IMAGE,
        ProblemKind.PALETTE_IMAGE,
        ProblemKind.EXIF_ROTATION,
        ProblemKind.NON_CONTIGUOUS_LABELS,
        # A zero-area segment carries no pixels: dropping it loses nothing, so the
        # sample stays usable; the checker still reports it.
        ProblemKind.ZERO_AREA_SEGMENT,
        ProblemKind.AREA_MISMATCH,
        # An image without segments teaches nothing: both modes drop it from training
        # (detectron2's filter_empty), the checker reports it.
        ProblemKind.EMPTY_IMAGE,
    }
)


@dataclass(frozen=True)
class Problem:
    kind: ProblemKind
    file: str
    message: str

    @property
    def severity(self) -> Severity:
        return Severity.WARNING if self.kind in WARNING_KINDS else Severity.ERROR

    def __str__(self) -> str:
        return f"{self.kind.value}: {self.file}: {self.message}"


class DataProblemError(UserError, ValueError):
    """A sample (or a whole dataset) that a strict loader refuses."""

    def __init__(self, problem: Problem | str):
        if not isinstance(problem, Problem):
            # Re-raised from a DataLoader worker: torch rebuilds it from its message.
            super().__init__(problem)
            self.problem = None
            return
        super().__init__(
            f"{problem}. Fix the file, or set data.strict=false (strict=False in build_dataset) to skip such samples "
            f"(run `ecom2f data check` to list every problem)."
        )
        self.problem = problem


class TooManyBadSamplesError(UserError, ValueError):
    """Raised at start when a lenient dataset would skip more than its allowed fraction."""


@dataclass
class ProblemLog:
    """Counts problems per kind, keeps the first examples, warns once per kind.

    Thread-safe; each DataLoader worker process holds its own copy, so counts made in
    workers are per worker (the counts made at construction are shared by all).
    """

    max_examples: int = 5
    counts: Counter = field(default_factory=Counter)
    examples: dict = field(default_factory=dict)
    skipped_samples: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __getstate__(self) -> dict:
        # Picklable for spawned DataLoader workers and Ray tasks: the lock is rebuilt.
        state = dict(self.__dict__)
        state.pop("_lock", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def add(self, problem: Problem, warn: bool = True) -> None:
        with self._lock:
            first = self.counts[problem.kind] == 0
            self.counts[problem.kind] += 1
            examples = self.examples.setdefault(problem.kind, [])
            if len(examples) < self.max_examples:
                examples.append(problem)
        if warn and first:
            logger.warning("%s (further problems of this kind are counted, not logged)", problem)

    def count_skip(self) -> None:
        with self._lock:
            self.skipped_samples += 1

    @property
    def num_errors(self) -> int:
        return sum(n for kind, n in self.counts.items() if kind not in WARNING_KINDS)

    def skip_counts(self) -> dict[str, int]:
        """{kind: count} of the error kinds (the ones that make a lenient loader skip)."""
        return {k.value: n for k, n in sorted(self.counts.items()) if k not in WARNING_KINDS}

    def summary(self) -> str:
        if not self.counts:
            return "no problems found"
        lines = []
        for kind, n in sorted(self.counts.items(), key=lambda kv: (kv[0] in WARNING_KINDS, kv[0].value)):
            severity = "warning" if kind in WARNING_KINDS else "error"
            lines.append(f"{severity} {kind.value}: {n}")
            for problem in self.examples.get(kind, []):
                lines.append(f"    e.g. {problem.file}: {problem.message}")
        return "\n".join(lines)


def first_error(problems: list[Problem]) -> Problem | None:
    return next((p for p in problems if p.severity is Severity.ERROR), None)
