"""Writes the GPU check's report, ``gpu_check.json`` and ``gpu_check.md``, from its work folder.

``python3 scripts/gpu/report.py WORK OUTDIR [--final] [--mode gpu|dry-run]`` reads what the
stages of ``scripts/gpu_check.sh`` left in WORK:

- ``stages.jsonl``: one line per stage (stage, status pass/fail/timeout/skip, rc, seconds,
  budget, note, log);
- ``device.json``: the machine (``device_info.py``);
- ``results-<stage>.jsonl``: test results (``results_plugin.py``);
- ``bench-<name>.json``: benchmark tables (``benchmarks/gpu``);
- ``<stage>.log``: each stage's output, whose tails go to ``OUTDIR/gpu_check.log``.

The check calls it after every stage, so a report exists whenever the check is stopped;
until ``--final`` its status reads ``incomplete``. Standard library only.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
from pathlib import Path

LOG_TAIL_LINES = 150
MD_MESSAGE_CHARS = 240
BAD_TEST_OUTCOMES = ("failed", "error", "xpassed")


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    records = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short by a stage killed mid-write
    return records


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def gather(work: Path, mode: str, final: bool) -> dict:
    stages = _read_jsonl(work / "stages.jsonl")
    tests = []
    for stage in stages:
        for record in _read_jsonl(work / f"results-{stage['stage']}.jsonl"):
            tests.append({"stage": stage["stage"], **record})
    benches = [b for b in (_read_json(Path(p)) for p in sorted(glob.glob(str(work / "bench-*.json")))) if b]
    summary: dict[str, int] = {}
    for test in tests:
        summary[test["outcome"]] = summary.get(test["outcome"], 0) + 1
    bad_stage = any(s["status"] in ("fail", "timeout") for s in stages)
    bad_test = any(t["outcome"] in BAD_TEST_OUTCOMES for t in tests)
    status = "fail" if bad_stage or bad_test else ("pass" if final else "incomplete")
    started = (work / "started").read_text().strip() if (work / "started").exists() else None
    return {
        "schema": 1,
        "mode": mode,
        "status": status,
        "started": started,
        "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(sum(s.get("seconds", 0) for s in stages), 1),
        "device": _read_json(work / "device.json") or {},
        "stages": stages,
        "tests": {"summary": summary, "results": tests},
        "benchmarks": benches,
    }


def _cell(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= MD_MESSAGE_CHARS else text[: MD_MESSAGE_CHARS - 3] + "..."


def _table(columns: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return lines


def _machine(report: dict) -> list[str]:
    device = report["device"]
    build = next((s for s in report["stages"] if s["stage"] == "build"), None)
    facts = [
        ("GPU", device.get("gpu", "none seen")),
        ("compute capability", device.get("capability")),
        ("GPU memory (GiB)", device.get("memory_gib")),
        ("multiprocessors / L2 (MiB)", f"{device.get('multiprocessors')} / {device.get('l2_mib')}"),
        ("driver", device.get("driver")),
        ("peak memory bandwidth (GB/s)", device.get("peak_bandwidth_gbs")),
        ("torch / its CUDA", f"{device.get('torch')} / {device.get('torch_cuda')}"),
        ("nvcc", device.get("nvcc")),
        ("Python / CPUs", f"{device.get('python')} / {device.get('cpus')}"),
        ("build of ecom2f._C (s)", f"{build['seconds']:.0f} ({build['status']})" if build else "not built"),
    ]
    return _table(["", ""], [[k, v if v is not None else "?"] for k, v in facts])


def _tests(report: dict) -> list[str]:
    tests = report["tests"]["results"]
    summary = ", ".join(f"{n} {k}" for k, n in sorted(report["tests"]["summary"].items())) or "none ran"
    lines = [f"{summary}.", ""]
    rows = []
    for t in tests:
        detail = t.get("message") or ""
        if t.get("properties"):
            detail = (detail + " " if detail else "") + json.dumps(t["properties"], default=str)
        rows.append([t["stage"], t["nodeid"], t["outcome"], f"{t.get('seconds', 0):.1f}", detail])
    lines += _table(["stage", "test", "result", "s", "message / measurements"], rows)
    failures = [t for t in tests if t["outcome"] in BAD_TEST_OUTCOMES and t.get("message")]
    if failures:
        lines += ["", "### Failures", ""]
        for t in failures:
            lines += [f"**{t['nodeid']}** ({t['stage']}, {t['outcome']})", "", "```", t["message"], "```", ""]
    return lines


def _benchmarks(report: dict) -> list[str]:
    lines = []
    for bench in report["benchmarks"]:
        lines += [f"### {bench.get('title', bench.get('name', 'benchmark'))}", ""]
        lines += [f"- {note}" for note in bench.get("notes", [])]
        for table in bench.get("tables", []):
            lines += ["", f"**{table['title']}**", ""] if table.get("title") else [""]
            lines += _table(table["columns"], table["rows"])
            lines += [f"", *[f"_{note}_" for note in table.get("notes", [])]] if table.get("notes") else []
        lines.append("")
    return lines or ["None ran."]


def markdown(report: dict) -> str:
    title = "GPU check (dry run)" if report["mode"] == "dry-run" else "GPU check"
    lines = [
        f"# {title}: {report['status'].upper()}",
        "",
        f"Written {report['written']} (started {report['started']}); {report['seconds']:.0f} s of stages.",
        "",
        "## Machine",
        "",
        *_machine(report),
        "",
        "## Stages",
        "",
        *_table(["stage", "result", "s", "budget s", "note"],
                [[s["stage"], s["status"], f"{s.get('seconds', 0):.1f}", s.get("budget", ""), s.get("note", "")]
                 for s in report["stages"]]),
        "",
        "## Tests",
        "",
        *_tests(report),
        "",
        "## Benchmarks",
        "",
        *_benchmarks(report),
    ]
    return "\n".join(lines) + "\n"


def log_tails(work: Path, stages: list[dict]) -> str:
    parts = []
    for stage in stages:
        path = work / f"{stage['stage']}.log"
        if not path.exists():
            continue
        lines = path.read_text(errors="replace").splitlines()
        cut = f" (last {LOG_TAIL_LINES} of {len(lines)} lines)" if len(lines) > LOG_TAIL_LINES else ""
        parts.append(f"===== {stage['stage']}: {stage['status']}{cut}\n" + "\n".join(lines[-LOG_TAIL_LINES:]))
    return "\n\n".join(parts) + "\n"


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("work", help="the check's work folder")
    parser.add_argument("outdir", help="where gpu_check.json, gpu_check.md and gpu_check.log go")
    parser.add_argument("--mode", default="gpu", choices=["gpu", "dry-run"])
    parser.add_argument("--final", action="store_true", help="every stage has run: pass unless something failed")
    args = parser.parse_args(argv)
    work, outdir = Path(args.work), Path(args.outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    report = gather(work, args.mode, args.final)
    _write(outdir / "gpu_check.json", json.dumps(report, indent=1, default=str) + "\n")
    _write(outdir / "gpu_check.md", markdown(report))
    _write(outdir / "gpu_check.log", log_tails(work, report["stages"]))
    if args.final:
        print(f"gpu_check: {report['status'].upper()}: {outdir}/gpu_check.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
