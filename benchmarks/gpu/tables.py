"""Benchmark results as tables: printed as Markdown rows as they come, and kept as JSON.

The JSON file (``--json``) is rewritten after every row, so a benchmark stopped by its time
limit still leaves every row it measured for the GPU check's report::

    {"name", "title", "notes": [...], "tables": [{"title", "columns", "rows", "notes"}]}
"""

from __future__ import annotations

import json
import os


def _format(value) -> str:
    if value is None:
        return ""
    if not isinstance(value, float):
        return str(value)
    size = abs(value)
    return f"{value:.0f}" if size >= 100 else f"{value:.1f}" if size >= 10 else f"{value:.2f}" if size >= 1 else f"{value:.3g}"


class BenchTables:
    def __init__(self, path: str | None, name: str, title: str) -> None:
        self.path = path
        self.data = {"name": name, "title": title, "notes": [], "tables": []}
        print(f"# {title}", flush=True)

    def note(self, text: str) -> None:
        self.data["notes"].append(text)
        print(text, flush=True)
        self._save()

    def table(self, title: str, columns: list[str], notes: list[str] = ()) -> list:
        """Starts a table; returns its row list, to give to :meth:`row`."""
        table = {"title": title, "columns": list(columns), "rows": [], "notes": list(notes)}
        self.data["tables"].append(table)
        print(f"\n{title}\n\n| " + " | ".join(columns) + " |\n|" + "---|" * len(columns), flush=True)
        self._save()
        return table["rows"]

    def row(self, rows: list, *values) -> None:
        cells = [_format(v) for v in values]
        rows.append(cells)
        print("| " + " | ".join(cells) + " |", flush=True)
        self._save()

    def _save(self) -> None:
        if not self.path:
            return
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.data, f, indent=1)
        os.replace(tmp, self.path)
