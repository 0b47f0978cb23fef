"""The run's report: tables and plots of the trade-off, written under ``<run>/report/``."""

from ecom2f.report.write import report_complete, write_report

__all__ = ["report_complete", "write_report"]
