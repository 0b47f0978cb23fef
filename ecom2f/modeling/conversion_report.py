"""What a checkpoint conversion did with each weight: mapped, left at initialisation, or ignored (and why)."""

from __future__ import annotations

import dataclasses
import re
from collections import defaultdict

__all__ = ["ConversionReport"]

_SHOWN = 3  # example keys per reason


def _family(key: str) -> str:
    """``decoder.layers.3.fc1.weight`` -> ``decoder.layers.*.fc1.weight``: one line per kind of key."""
    return re.sub(r"\.\d+\.", ".*.", key)


@dataclasses.dataclass
class ConversionReport:
    """``mapped``: target keys filled from the source; ``initialised`` / ``ignored``: key -> why."""

    source: str
    target: str
    mapped: list[str] = dataclasses.field(default_factory=list)
    initialised: dict[str, str] = dataclasses.field(default_factory=dict)
    ignored: dict[str, str] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)

    def lines(self) -> list[str]:
        """A summary for people: counts, then each reason with a few example keys."""
        out = [f"{self.source} -> {self.target}: {len(self.mapped)} tensors mapped"]
        for title, entries in (("left at initialisation", self.initialised), ("ignored", self.ignored)):
            by_reason: dict[str, list[str]] = defaultdict(list)
            for key, why in entries.items():
                by_reason[why].append(key)
            for why, keys in sorted(by_reason.items()):
                families = sorted({_family(key) for key in keys})
                more = f", ... ({len(families) - _SHOWN} more kinds)" if len(families) > _SHOWN else ""
                out.append(f"  {title} ({len(keys)}): {', '.join(families[:_SHOWN])}{more}: {why}")
        out += [f"  note: {note}" for note in self.notes]
        return out
