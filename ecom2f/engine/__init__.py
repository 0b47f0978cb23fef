"""Training machinery shared by the steps: sampling, schedules, optimiser groups, DeepSpeed.

Plain functions and classes, testable without Ray; ``ecom2f.steps`` wires them to the
run configuration.
"""
