"""Correlation reports: metrics (scipy), the report (report.json, report.md), plots (matplotlib)."""
