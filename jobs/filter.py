"""``ray job submit --working-dir . -- python -m jobs.filter -c jobs/configs/filter.yaml [--set k=v]``."""

import sys

from workembed.cli import stage_main

if __name__ == "__main__":
    sys.exit(stage_main("filter"))
