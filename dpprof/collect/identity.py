"""Who a training process is (global rank, local rank, node, device): what every collect module that writes a
rank's files needs, kept apart from the worker that fills it in (``worker.setup_identity``,
``script_session.identity_from_env``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class RankIdentity:
    """Who this process is: global rank, local rank on its node, node rank, and the node's file key."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    node_rank: int = 0
    host: str = ""
    node_key: str = ""
    distributed: bool = False
    device: torch.device = torch.device("cpu")
    nodes: list[dict[str, Any]] | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_node_main(self) -> bool:
        return self.local_rank == 0
