"""Serving: the HTTP API over a served encoder version.

The runtime is plain Python (no Ray): :mod:`~workembed.serving.config` (``ServeConfig``),
:mod:`~workembed.serving.spaces` (target spaces), :mod:`~workembed.serving.runtime` (``ServedModel``: embed,
rank, extract, normalise titles), :mod:`~workembed.serving.span_extraction` (skill spans, job-ad
segmentation), :mod:`~workembed.serving.profiles` (the Qdrant profile index) and
:mod:`~workembed.serving.schemas` (request and response models with the configured limits). Nothing is
imported here, so importing the package is cheap.
"""
