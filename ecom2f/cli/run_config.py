"""The arguments every step command shares, ``[--config C] [--storage URI] [--run NAME|RUN] [KEY=VALUE ...]``,
and the run configuration they name: the one place commands get their configuration.

Two ways to name a run:

- ``--config C`` (a YAML file) starts from that file; ``--storage`` and ``--run NAME`` set
  ``storage.root`` and ``storage.run``.
- ``--run RUN`` alone names an existing run, by its folder or URI (``runs/demo``,
  ``s3://bucket/runs/demo``), or by its name under ``--storage``. The configuration is the one
  the run saved (``<run>/config.yaml``, written when step 1 starts), with ``storage.root`` and
  ``storage.run`` taken from where the run is, so a run that was moved or copied still reads
  its own artifacts. Overrides still apply on top.

With ``--config``, ``--run`` may also be a folder or URI: it then sets both ``storage.root``
and ``storage.run``.
"""

from __future__ import annotations

import argparse
import posixpath

from ecom2f.errors import BadInputError, MissingFileError


def add_run_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds ``--config``, ``--storage``, ``--run`` and the positional dot-path overrides."""
    parser.add_argument(
        "--config", metavar="YAML",
        help="run configuration YAML (configs/*.yaml, or s3://...); optional when --run names an existing run, "
             "whose saved config.yaml is then used",
    )
    parser.add_argument("--storage", metavar="ROOT",
                        help="artifact root: a local folder or s3://bucket/prefix (sets storage.root; default: the "
                             "configuration's)")
    parser.add_argument(
        "--run", metavar="RUN",
        help="the run: a name under the storage root (sets storage.run), or the run's folder or URI "
             "(runs/demo, s3://bucket/runs/demo); without --config it must exist, and its saved config.yaml is used",
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE",
        help="dot-path overrides of the configuration, e.g. solver.base_lr=2e-4 ray.num_workers=4",
    )


def split_run_uri(run: str) -> tuple[str, str]:
    """``"runs/demo"`` -> ``("runs", "demo")``; ``"s3://b/runs/demo/"`` -> ``("s3://b/runs", "demo")``;
    ``"demo"`` -> ``(".", "demo")``. A bucket alone (``s3://b``) names no run."""
    text = run.rstrip("/")
    if text.startswith("s3://"):
        bucket_and_key = text[len("s3://"):]
        if "/" not in bucket_and_key:
            raise BadInputError(f"--run {run!r} is a bucket, not a run: give the run's URI, e.g. s3://{bucket_and_key}"
                                "/runs/demo")
        root, name = posixpath.split(text)
        return root, name
    root, name = posixpath.split(text)
    if not name or name in (".", ".."):
        raise BadInputError(f"--run {run!r} names no run: give the run's folder, e.g. --run runs/demo")
    return root or ".", name


def _names_a_location(run: str) -> bool:
    return "/" in run


def _run_location(args: argparse.Namespace) -> tuple[str, str]:
    """``(root, name)`` of a ``--run`` that is a folder or URI; refuses ``--storage`` beside it."""
    if args.storage:
        raise BadInputError(f"--run {args.run!r} is a run's folder, which already says where the run is: drop "
                            f"--storage {args.storage}, or give --run the run's name only")
    return split_run_uri(args.run)


def run_config_overrides(args: argparse.Namespace) -> list[str]:
    """The overrides in the order they apply: the positional ones, then ``--storage`` and ``--run``
    (so the flags win over a ``storage.root=`` given among the overrides)."""
    overrides = list(args.overrides)
    if args.run and _names_a_location(args.run):
        root, name = _run_location(args)
        return [*overrides, f"storage.root={root}", f"storage.run={name}"]
    if args.storage:
        overrides.append(f"storage.root={args.storage}")
    if args.run:
        overrides.append(f"storage.run={args.run}")
    return overrides


def saved_run_location(args: argparse.Namespace) -> tuple[str, str]:
    """``(root, name)`` of the existing run that ``--run`` (and ``--storage``) name, without ``--config``:
    a folder or URI; a name under ``--storage``; else a name is a folder of the current directory."""
    if not args.run:
        raise BadInputError("name the run: --run RUN (its folder, e.g. runs/demo, or s3://bucket/runs/demo) to "
                            "use the configuration it saved, or --config CONFIG (e.g. configs/demo_cpu.yaml)")
    if _names_a_location(args.run):
        return _run_location(args)
    if args.storage:
        return args.storage, args.run
    return split_run_uri(args.run)


def load_saved_run_config(args: argparse.Namespace):
    """The configuration the run of ``--run`` saved, with its real location and the overrides applied."""
    from ecom2f import storage
    from ecom2f.config import load_config

    root, name = saved_run_location(args)
    saved = storage.RunLayout(root, name).config
    if not storage.exists(saved):
        where = storage.RunLayout(root, name).run_uri
        raise MissingFileError(
            f"--run {args.run}: no run at {where} (its saved configuration {saved} does not exist; step 1 writes it "
            "when it starts). Give the run's folder (e.g. --run runs/demo), or --config CONFIG to start a new run"
        )
    return load_config(saved, [*args.overrides, f"storage.root={root}", f"storage.run={name}"])


def load_run_config(args: argparse.Namespace):
    """The validated :class:`ecom2f.config.Config` of a step command's arguments.

    With ``--config``: that file, the overrides, then ``--storage``/``--run``. Without: the
    configuration saved by the run ``--run`` names (see the module docstring).
    Raises a ``UserError`` (one line, exit status 2) naming every bad key or value.
    """
    if args.config is None:
        return load_saved_run_config(args)
    from ecom2f.config import load_config

    return load_config(args.config, run_config_overrides(args))
