"""Thin ``ray job submit`` entrypoints, one per pipeline stage: ``python -m jobs.<stage> -c CONFIG``."""
