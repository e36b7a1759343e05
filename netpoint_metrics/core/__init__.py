"""The framework-agnostic core: the multiprocess directory's whole lifecycle.

Nothing in this package imports Django or a server. The Gunicorn and uWSGI adapters, the
Django view and the CLI all call the same few functions in :mod:`.lifecycle`,
:mod:`.archive` and :mod:`.collect`.
"""
