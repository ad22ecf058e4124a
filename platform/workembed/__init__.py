"""workembed: a distributed data-and-training platform for work-domain language models."""

__version__ = "0.1.0"
