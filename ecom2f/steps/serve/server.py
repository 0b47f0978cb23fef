"""``ecom2f serve``: the run's parent and gates behind an HTTP endpoint on Ray Serve.

:func:`start_serving` checks the run (the parent exists, it has gates, the default budget is one
of them) before Ray starts, then starts Serve's HTTP proxy on ``serving.serve.host:port``
(127.0.0.1 by default: reachable from this machine only) and deploys :class:`Segmenter` with
``num_replicas`` replicas of ``num_cpus`` / ``num_gpus`` each. :func:`serve_until_stopped` is the
command: it serves until Ctrl-C or SIGTERM, then shuts Serve down.
"""

from __future__ import annotations

import logging
import signal
import threading

from ecom2f import storage
from ecom2f.config import Config
from ecom2f.steps.predict.categories import resolve_categories

log = logging.getLogger(__name__)

__all__ = ["APP_NAME", "build_app", "check_run", "serve_until_stopped", "start_serving"]

APP_NAME = "ecom2f"


def check_run(config: Config) -> list[str]:
    """The run's budgets; raises MissingStepError (no parent: step 1; no gate: step 3) or BadInputError
    (``serving.budget`` is not one of them) before any replica starts."""
    from ecom2f.steps.evaluate.job import chosen_gate_dirs
    from ecom2f.steps.inference import require_parent_weights
    from ecom2f.steps.predict.predictor import choose

    layout = config.storage.layout()
    require_parent_weights(layout.parent_weights)
    budgets = list(chosen_gate_dirs(config))
    if config.serving.budget is not None or not budgets:
        choose(budgets, config.serving.budget, None, None, config.encoder_layers, layout.gates)
    return budgets


def build_app(config: Config, categories: list[dict]):
    """The Serve application: :class:`Segmenter` with the replicas and resources of ``serving.serve``."""
    from ray import serve

    from ecom2f.steps.serve.deployment import Segmenter

    settings = config.serving.serve
    deployment = serve.deployment(
        Segmenter, name="segmenter", num_replicas=settings.num_replicas,
        max_ongoing_requests=settings.max_ongoing_requests,
        ray_actor_options={"num_cpus": settings.num_cpus, "num_gpus": settings.num_gpus},
    )
    return deployment.bind(config.model_dump(mode="json"), categories)


def start_serving(config: Config, categories_file: str | None = None) -> str:
    """Deploys the application and returns its URL once every replica is up (the call waits for them)."""
    from ray import serve

    from ecom2f.steps.ray_cluster import init_ray

    storage.configure(config.storage.s3_options())
    budgets = check_run(config)
    categories = resolve_categories(config, categories_file)
    settings = config.serving.serve
    init_ray(config.ray.address)
    serve.start(http_options={"host": settings.host, "port": settings.port})
    serve.run(build_app(config, categories), name=APP_NAME, route_prefix=settings.route_prefix)
    url = f"http://{settings.host}:{settings.port}{settings.route_prefix}"
    log.info("serving %s (budgets %s) at %s", config.storage.layout().run_uri, budgets, url)
    return url


def serve_until_stopped(config: Config, categories_file: str | None = None, on_ready=print) -> None:
    """:func:`start_serving`, then wait; Ctrl-C or SIGTERM shuts Serve down (the Ray cluster stays
    when it was given, a local one ends with this process)."""
    from ray import serve

    url = start_serving(config, categories_file)
    on_ready(f"serving at {url} (POST an image; GET {url.rstrip('/')}/healthz); Ctrl-C stops")
    stopped = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    try:
        stopped.wait()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        serve.shutdown()
