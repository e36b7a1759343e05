"""A NetBox-style configuration module for tests: METRICS_ENABLED set in settings only."""

METRICS_ENABLED = True
