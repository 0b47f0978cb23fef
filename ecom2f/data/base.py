"""Strict and lenient loading shared by every dataset format.

Problems are found in two places:

- at construction, from the annotation file and directory listings (unknown
  categories, duplicate ids, missing files): a strict dataset raises on
  the first, a lenient one drops those samples; if the dropped fraction exceeds
  ``max_bad_fraction`` the dataset refuses to start (TooManyBadSamplesError);
- when a sample is read (truncated images, PNG size or id mismatches, labels out of
  range): strict raises; lenient logs once per kind, counts the skip and returns the
  next good sample instead, so training never dies on a sample it could skip.
"""

from __future__ import annotations

from typing import Callable

import torch

from ecom2f.data.metadata import DatasetMetadata
from ecom2f.data.problems import DataProblemError, Problem, ProblemKind, Severity, TooManyBadSamplesError, first_error

DEFAULT_MAX_BAD_FRACTION = 0.05
# A lenient dataset gives up after this many bad samples in a row (then nearly all
# of it is bad, which the start-up check should have caught).
MAX_CONSECUTIVE_SKIPS = 64


class SegmentationDataset(torch.utils.data.Dataset):
    """A map-style dataset of samples (see ``ecom2f.data.sample``).

    Subclasses set ``self.records`` (one per image) through :meth:`_set_records` and
    implement :meth:`_load_record`.
    """

    def __init__(
        self,
        metadata: DatasetMetadata,
        strict: bool = True,
        max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION,
        transform: Callable[[dict], dict] | None = None,
        check_only: bool = False,
    ):
        if not 0.0 <= max_bad_fraction <= 1.0:
            raise ValueError(f"max_bad_fraction={max_bad_fraction} must be in [0, 1]")
        self.metadata = metadata
        self.strict = strict
        self.max_bad_fraction = max_bad_fraction
        self.transform = transform
        self.records: list[dict] = []
        self.index_problems: list[Problem] = []
        self.num_indexed = 0  # samples in the annotations, before skipping bad ones
        # The checker sets check_only: collect every problem, raise nothing.
        self._checking = check_only

    # -- construction ---------------------------------------------------------------
    def _set_records(self, records: list[dict], problems_per_record: list[list[Problem]]) -> None:
        """Keep the records without index-level errors (strict: raise on the first)."""
        kept = []
        for record, problems in zip(records, problems_per_record):
            self.index_problems.extend(problems)
            error = first_error(problems)
            if error is not None and self.strict and not self._checking:
                raise DataProblemError(error)
            for problem in problems:
                self.metadata.problems.add(problem, warn=not self._checking)
            empty = any(p.kind is ProblemKind.EMPTY_IMAGE for p in problems)
            if error is not None:
                self.metadata.problems.count_skip()
            elif not empty:  # an empty image is dropped in both modes: a warning, not a skip
                kept.append(record)
        total = self.num_indexed = len(records)
        bad = sum(first_error(p) is not None for p in problems_per_record)
        if total and bad / total > self.max_bad_fraction and not self._checking:
            raise TooManyBadSamplesError(
                f"dataset {self.metadata.name!r}: {bad} of {total} samples ({bad / total:.1%}) are bad, more than "
                f"max_bad_fraction={self.max_bad_fraction:.1%}:\n{self.metadata.problems.summary()}\n"
                f"Repair the data (`ecom2f data check` lists every problem) or raise data.max_bad_fraction."
            )
        if total and not kept and not self._checking:
            raise TooManyBadSamplesError(
                f"dataset {self.metadata.name!r}: none of its {total} samples is usable:\n"
                f"{self.metadata.problems.summary()}"
            )
        self.records = kept

    # -- reading --------------------------------------------------------------------
    def _load_record(self, record: dict, problems: list[Problem]) -> dict:
        """Read one sample; append problems found; raise DataProblemError if unusable."""
        raise NotImplementedError

    def load_checked(self, index: int) -> tuple[dict | None, list[Problem]]:
        """The sample and every problem found while reading it (None if unusable)."""
        problems: list[Problem] = []
        try:
            sample = self._load_record(self.records[index], problems)
        except DataProblemError as error:
            problems.append(error.problem)
            return None, problems
        return (None if first_error(problems) else sample), problems

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} samples")
        index %= len(self)
        for attempt in range(min(len(self), MAX_CONSECUTIVE_SKIPS)):
            sample, problems = self.load_checked((index + attempt) % len(self))
            for problem in problems:
                if problem.severity is Severity.ERROR and self.strict:
                    raise DataProblemError(problem)
                self.metadata.problems.add(problem)
            if sample is not None:
                return self.transform(sample) if self.transform else sample
            self.metadata.problems.count_skip()
        raise RuntimeError(
            f"dataset {self.metadata.name!r}: {MAX_CONSECUTIVE_SKIPS} bad samples in a row from index {index}:\n"
            f"{self.metadata.problems.summary()}\nRun `ecom2f data check` on it."
        )
