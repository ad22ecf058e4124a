"""``ray job submit --working-dir . -- python -m jobs.extract -c jobs/configs/extract.yaml [--set k=v]``."""

import sys

from workembed.cli import stage_main

if __name__ == "__main__":
    sys.exit(stage_main("extract"))
