"""``ecom2f serve``: the run's parent and every budget's gate behind an HTTP endpoint (Ray Serve)."""

from __future__ import annotations

import argparse

from ecom2f.cli.run_config import add_run_config_arguments, load_run_config


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Adds ``serve``."""
    parser = subparsers.add_parser(
        "serve", help="serve the run's parent and gates over HTTP (Ray Serve); each request picks its budget",
        description="Deploys the run's parent with every chosen gate on Ray Serve ($RAY_ADDRESS or ray.address, "
                    "else a local cluster). POST an image (raw body or multipart 'image') to the route; "
                    "?budget=<name> (or ?depth=K) picks the trade-off per request, ?masks=png returns PNG masks "
                    "instead of RLE. GET <route>/healthz reports the budgets. Settings: serving.serve.* (host, "
                    "port, replicas, CPUs/GPUs per replica, batching, request size limit). Runs until Ctrl-C.")
    add_run_config_arguments(parser)
    parser.add_argument("--host", help="interface to listen on (serving.serve.host; default 127.0.0.1: this "
                                       "machine only; 0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, help="HTTP port (serving.serve.port)")
    parser.add_argument("--budget", help="the default budget of requests that name none (serving.budget)")
    parser.add_argument("--categories", help="COCO category JSON of the run's classes (default: the run's "
                                             "validation set's, else class_<i>)")
    parser.set_defaults(func=run_serve_command)


def run_serve_command(args: argparse.Namespace) -> int:
    """Serves until interrupted."""
    extra = [f"serving.serve.{key}={value}" for key, value in (("host", args.host), ("port", args.port))
             if value is not None]
    if args.budget is not None:
        extra.append(f"serving.budget={args.budget}")
    args.overrides = [*args.overrides, *extra]
    config = load_run_config(args)
    from ecom2f.steps.serve.server import serve_until_stopped

    serve_until_stopped(config, args.categories, on_ready=lambda line: print(line, flush=True))
    return 0
