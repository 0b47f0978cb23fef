"""Warnings every run printed that ask nothing of the user, each turned off by its own setting.

Set as environment defaults before a step starts Ray (a value the user set wins), so they reach
the processes of a local Ray cluster, which inherit this process's environment. On a cluster
the job's environment comes from ``cluster/runtime_env.yaml`` instead.

| setting | the warning | why it is harmless |
|---|---|---|
| ``TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S=0`` | Tune: "Experiment state snapshotting has been triggered multiple times in the last 5.0 seconds" | step 3's trials last seconds and keep one checkpoint each, so Tune saves its experiment state (a few KB) often; it costs milliseconds |
| ``RAY_TRAIN_ENABLE_PREEMPTION_WATCHER=0`` (local clusters only) | core_worker: "Actor with class name: 'PreemptionWatcher' ... has constructor arguments in the object store and max_restarts > 0" | the watcher follows cluster nodes being drained (spot preemption); a local cluster is this one machine, which cannot be drained from under the job |
| ``DS_ACCELERATOR=cpu`` (``ray.use_gpu`` false) | DeepSpeed, once per rank: "Setting accelerator to CPU. If you have GPU or other accelerator, we were unable to detect it." | the configuration asks for CPU workers; naming the accelerator skips DeepSpeed's search |
"""

from __future__ import annotations

import os


def harmless_warning_settings(config) -> dict[str, str]:
    """The environment settings of the table above that apply to ``config``'s run."""
    settings = {"TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0"}
    if not (config.ray.address or os.environ.get("RAY_ADDRESS")):
        settings["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] = "0"
    if not config.ray.use_gpu:
        settings["DS_ACCELERATOR"] = "cpu"
    return settings


def silence_harmless_warnings(config) -> dict[str, str]:
    """Sets the settings as defaults of this process's environment; returns those it set."""
    applied = {}
    for name, value in harmless_warning_settings(config).items():
        if name not in os.environ:
            os.environ[name] = value
            applied[name] = value
    return applied
