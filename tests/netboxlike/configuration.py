"""The operator's file, as NetBox's ``configuration.py``."""

METRICS_ENABLED = True
