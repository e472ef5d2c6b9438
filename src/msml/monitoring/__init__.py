"""Monitoring: metric definitions, drift, dashboards and alert rules as code."""
