"""``python -m ray_jobs.<step> ARGS`` is ``ecom2f <command> ARGS`` (:func:`ecom2f.cli.main`), for Ray job
drivers and ``make demo``: each module is the three lines that call it; no logic here."""
