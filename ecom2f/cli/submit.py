"""``ecom2f submit [options] -- <ecom2f command ...>``: run a command as a job on a Ray cluster."""

from __future__ import annotations

import argparse
import sys

# ``ecom2f submit --wait --timeout S`` exits with this status when the job outlives S seconds,
# as coreutils' ``timeout`` does.
EXIT_STILL_RUNNING = 124


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Adds ``submit``."""
    parser = subparsers.add_parser(
        "submit",
        help="run an ecom2f command as a job on the Ray cluster in $RAY_ADDRESS (Ray Jobs API)",
        description=(
            "Upload the working directory with the runtime environment of cluster/runtime_env.yaml to the "
            "cluster's dashboard ($RAY_ADDRESS, e.g. http://127.0.0.1:8265) and run `ecom2f COMMAND ...` there. "
            "Prints the job id and the commands that follow its logs or stop it. Example: ecom2f submit -- "
            "train-parent --config configs/coco_panoptic_r50.yaml --storage s3://my-bucket/runs"
        ),
    )
    parser.add_argument("--address", help="dashboard URL of the cluster (default: $RAY_ADDRESS)")
    parser.add_argument("--runtime-env", default="cluster/runtime_env.yaml",
                        help="runtime environment YAML (default: cluster/runtime_env.yaml)")
    parser.add_argument("--working-dir", help="directory to upload (default: the runtime env's working_dir, '.')")
    parser.add_argument("--submission-id", help="job id to use (default: Ray makes one); must be new")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra environment variable for this job (repeatable)")
    parser.add_argument("--wait", action="store_true", help="stream the job's logs until it ends; exit 0 if it succeeded")
    parser.add_argument("--timeout", type=float, help="with --wait: give up waiting after this many seconds")
    parser.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND ...",
                        help="the ecom2f command to run, after --")
    parser.set_defaults(func=run_submit)


def run_submit(args: argparse.Namespace) -> int:
    """Submits the job and prints how to follow it; with ``--wait``, its logs and final status.

    Bad input raises :class:`ecom2f.submit.SubmitError` (a ``UserError``) before any
    connection to the cluster.
    """
    from ecom2f.submit import job_client, load_runtime_env, parse_env_pairs, print_submitted, submit, wait_for_job

    runtime_env = load_runtime_env(args.runtime_env, args.working_dir)
    job = submit(args.command, args.address, runtime_env, args.submission_id, parse_env_pairs(args.env),
                 parser=args.ecom2f_parser)
    print_submitted(job)
    if not args.wait:
        return 0
    try:
        status = wait_for_job(job_client(job.address), job.job_id, args.timeout, out=sys.stdout)
    except TimeoutError as error:
        print(f"ecom2f submit: {error}", file=sys.stderr)
        return EXIT_STILL_RUNNING
    print(f"job {job.job_id}: {status}")
    return 0 if status == "SUCCEEDED" else 1
