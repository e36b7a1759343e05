"""The registry every way of serving metrics uses (the Django view, ``serve``)."""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry

log = logging.getLogger(__name__)


def new_registry() -> CollectorRegistry:
    """A registry whose ``name[]`` filters see our collectors.

    They declare no names up front, so without ``support_collectors_without_names`` a
    filtered scrape would come back empty.
    """
    try:
        return CollectorRegistry(auto_describe=False, support_collectors_without_names=True)
    except TypeError:  # an older prometheus-client: filters then return nothing
        return CollectorRegistry(auto_describe=False)
