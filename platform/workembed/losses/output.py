"""What every loss returns: the scalar to back-propagate and its detached parts for logging."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor


class LossOutput(NamedTuple):
    """``loss``: the scalar to back-propagate. ``parts``: detached scalars to log (per task for the
    bipartite InfoNCE, per anchor side ``project`` / ``profile`` for the adjacency losses); a part is
    absent when the batch had nothing to compute it from."""

    loss: Tensor
    parts: dict[str, Tensor]
