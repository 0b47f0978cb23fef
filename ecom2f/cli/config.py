"""``ecom2f config show CONFIG [key=value ...]``: print the resolved configuration."""

from __future__ import annotations

import argparse
import json
import sys

from ecom2f.errors import UserError


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Adds ``config`` and its one action, ``show``."""
    config = subparsers.add_parser("config", help="inspect run configurations (configs/*.yaml)")
    actions = config.add_subparsers(dest="config_command", metavar="ACTION")
    show = actions.add_parser(
        "show",
        help="print a configuration fully resolved: _base_ files merged, overrides applied, defaults filled",
        description=(
            "Load CONFIG (a YAML path or s3:// URI) with its _base_ chain, apply the dot-path "
            "overrides, validate, and print every key. Exit status 2 and the problems on one "
            "line of stderr if it is invalid."
        ),
    )
    show.add_argument("config", metavar="CONFIG", help="YAML file, e.g. configs/demo_cpu.yaml")
    show.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="dot-path overrides, values read as YAML: solver.base_lr=2e-4 parent.exits=[2,4,6]",
    )
    show.add_argument("--section", help="print only this top-level section (e.g. solver)")
    show.add_argument("--format", choices=["yaml", "json"], default="yaml", help="output format (default yaml)")
    show.set_defaults(func=run_config_show)
    config.set_defaults(func=lambda args: (config.print_help(), 2)[1])


def run_config_show(args: argparse.Namespace) -> int:
    """Prints the whole configuration, or one section, as YAML or JSON."""
    from ecom2f.config import config_to_yaml, load_config
    from ecom2f.config.yaml_tree import dump_yaml

    config = load_config(args.config, args.overrides)
    if args.section is None:
        tree = config.model_dump(mode="json", by_alias=True)
        text = config_to_yaml(config) if args.format == "yaml" else json.dumps(tree, indent=2) + "\n"
    else:
        if args.section not in type(config).model_fields:
            raise UserError(f"no section {args.section!r}; sections: {', '.join(type(config).model_fields)}")
        part = {args.section: config.model_dump(mode="json", by_alias=True)[args.section]}
        text = dump_yaml(part) if args.format == "yaml" else json.dumps(part, indent=2) + "\n"
    sys.stdout.write(text)
    return 0
