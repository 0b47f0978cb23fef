"""``ecom2f config show CONFIG [key=value ...]``: print the resolved configuration."""

from __future__ import annotations

import json
import sys


def add_commands(subparsers) -> None:
    config = subparsers.add_parser("config", help="inspect run configurations (configs/*.yaml)")
    actions = config.add_subparsers(dest="config_command", metavar="ACTION")
    show = actions.add_parser(
        "show",
        help="print a configuration fully resolved: _base_ files merged, overrides applied, defaults filled",
        description=(
            "Load CONFIG (a YAML path or s3:// URI) with its _base_ chain, apply the dot-path "
            "overrides, validate, and print every key. Exit status 2 and the list of problems "
            "on stderr if it is invalid."
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
    show.set_defaults(func=_show)
    config.set_defaults(func=lambda args: (config.print_help(), 2)[1])


def _show(args) -> int:
    from ecom2f.config import ConfigError, config_to_yaml, load_config
    from ecom2f.config.yaml_tree import dump_yaml

    try:
        config = load_config(args.config, args.overrides)
    except ConfigError as error:
        print(f"ecom2f config show: {error}", file=sys.stderr)
        return 2
    if args.section is None:
        tree = config.model_dump(mode="json", by_alias=True)
        text = config_to_yaml(config) if args.format == "yaml" else json.dumps(tree, indent=2) + "\n"
    else:
        if args.section not in type(config).model_fields:
            names = ", ".join(type(config).model_fields)
            print(f"ecom2f config show: no section {args.section!r}; sections: {names}", file=sys.stderr)
            return 2
        part = {args.section: config.model_dump(mode="json", by_alias=True)[args.section]}
        text = dump_yaml(part) if args.format == "yaml" else json.dumps(part, indent=2) + "\n"
    sys.stdout.write(text)
    return 0
