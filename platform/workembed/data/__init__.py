"""Ray Data stages: ingest, validate/quarantine, segment, dedupe, ground, graph."""
