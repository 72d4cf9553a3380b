"""Processes a script starts itself (``torch.multiprocessing.spawn``, ``multiprocessing.Process``).

``dpprof run`` records the process it runs in. A script that trains in processes of its own making
(``mp.spawn(train, nprocs=2)``) calls no module in that process: without this count the run would read
"single, 0 steps, choose another --step-on". Every multiprocessing process is started by
``multiprocessing.process.BaseProcess.start`` (torch's ``start_processes`` creates ``mp.Process`` objects
of a spawn context: torch/multiprocessing/spawn.py), so that one method is wrapped for the session.
DataLoader workers (``target=_utils.worker._worker_loop``: torch/utils/data/dataloader.py) are not
counted: they load data for this process.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dpprof.collect.patches import Patches

_DATALOADER_WORKERS = "torch.utils.data._utils.worker"


class ChildProcesses:
    """``started``: processes the script started through multiprocessing, DataLoader workers aside."""

    def __init__(self, patches: Patches) -> None:
        from multiprocessing.process import BaseProcess

        self.started = 0
        patches.wrap(BaseProcess, "start", self._wrap)

    def _wrap(self, start: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(process: Any, *args: Any, **kwargs: Any) -> Any:
            out = start(process, *args, **kwargs)
            target = getattr(process, "_target", None)
            if getattr(target, "__module__", None) != _DATALOADER_WORKERS:
                self.started += 1
            return out
        return wrapped

    def advice(self) -> str:
        """What to say when no module was called here but processes were started."""
        return (f"no module was called in this process, and the script started {self.started} child "
                "process(es) (torch.multiprocessing.spawn or multiprocessing): dpprof records only the process "
                "it runs in, so no step or trace of theirs is here; let dpprof start the ranks instead: "
                "dpprof run --nproc N SCRIPT (through torchrun; the script reads its rank from RANK and "
                "LOCAL_RANK and calls train() itself), or torchrun --nproc-per-node N -m dpprof.run SCRIPT")
