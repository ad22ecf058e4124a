"""``ray job submit --working-dir . -- python -m jobs.ingest -c jobs/configs/ingest.yaml [--set k=v ...]``."""

import sys

from workembed.cli import stage_main

if __name__ == "__main__":
    sys.exit(stage_main("ingest"))
