"""``ray job submit --working-dir . -- python -m jobs.synthesize -c jobs/configs/synthesize.yaml``."""

import sys

from workembed.cli import stage_main

if __name__ == "__main__":
    sys.exit(stage_main("synthesize"))
