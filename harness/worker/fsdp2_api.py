"""FSDP2 and DTensor where each torch release keeps them: the public modules from torch 2.6 on
(``torch.distributed.fsdp``, ``torch.distributed.tensor``), the private ones before
(``torch.distributed._composable.fsdp`` from 2.4, ``torch.distributed._tensor``). The workers
import them from here, so that an older release (the release ladder) still runs every cell that
does not use them."""

from __future__ import annotations

try:
    from torch.distributed.fsdp import FSDPModule, fully_shard
except ImportError:  # torch 2.4 and 2.5
    from torch.distributed._composable.fsdp import (  # type: ignore[no-redef,attr-defined,unused-ignore]
        FSDPModule,
        fully_shard,
    )
try:
    from torch.distributed.tensor import DTensor
except ImportError:  # torch 2.4
    from torch.distributed._tensor import DTensor  # type: ignore[no-redef,attr-defined,unused-ignore]

__all__ = ["DTensor", "FSDPModule", "fully_shard"]
