"""Synthetic ESCO-grounded job-ad sentences: prompt templates and builders (:mod:`workembed.synth.templates`),
generation through Ray Data with a registered LLM backend, output validation and grounding.

Importing the package loads nothing heavy; each submodule imports what it needs.
"""
