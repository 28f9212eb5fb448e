"""The curator workbench (``featkit serve``): a local web app over a collection's cached embeddings.

``backend.Workbench`` does the work (and is the only module here that calls the rest of
featkit), ``app`` translates HTTP to it, ``server`` runs it; ``static/`` is the page and
its vendored scatter library.
"""
