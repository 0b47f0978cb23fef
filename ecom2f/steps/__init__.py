"""The ECO-M2F steps as plain functions, runnable and testable without a Ray cluster."""
