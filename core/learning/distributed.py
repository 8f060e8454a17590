"""Where the nightly job runs: its ranks under ``accelerate launch`` (or ``torchrun``), and its
share of the CPU (:func:`lower_priority`).

Several processes run ``python -m core nightly``, one per GPU. Only rank 0 (the *main* process)
touches the database, the nightly lock and the adapter folders; it decides which readers to
train, and before each training run it sends the task (method, pairs, hyper-parameters, output
folder) to the other ranks. Every rank then runs the same TRL trainer, which spreads the batches
over the processes (DDP), and only rank 0 saves the adapter. When rank 0 is done it sends None
and every rank leaves. A single process (no ``WORLD_SIZE``) runs everything itself, unchanged.

The process group is the one accelerate sets up for the Trainer (NCCL on GPUs, gloo on CPUs),
so the same command works on one GPU, several GPUs, or (for tests) several CPU processes.
"""

from __future__ import annotations

import os
import sys
from typing import Any

__all__ = ["world_size", "rank", "is_main", "init", "broadcast", "barrier", "finish",
           "lower_priority"]


def world_size() -> int:
    """Processes in this job (1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def rank() -> int:
    """This process's global rank (0 without a launcher)."""
    return int(os.environ.get("RANK", "0") or 0)


def is_main() -> bool:
    return rank() == 0


def init() -> None:
    """Join the launcher's process group (a no-op for a single process)."""
    if world_size() <= 1:
        return
    import torch  # deferred: torch takes seconds to import; only model work needs it
    from accelerate import PartialState  # deferred: heavy

    # the same state the Trainer will use: GPUs when there are any, else CPU processes (gloo)
    PartialState(cpu=not torch.cuda.is_available())


def broadcast(obj: Any = None) -> Any:
    """Rank 0's ``obj`` on every rank (rank 0 gets its own back)."""
    if world_size() <= 1:
        return obj
    from accelerate.utils import broadcast_object_list  # deferred: heavy

    box = [obj if is_main() else None]
    broadcast_object_list(box, from_process=0)
    return box[0]


def barrier() -> None:
    if world_size() <= 1:
        return
    import torch.distributed as dist  # deferred: heavy

    if dist.is_initialized():
        dist.barrier()


def finish() -> None:
    """Wait for every rank, then leave the process group (a clean exit for the launcher)."""
    if world_size() <= 1:
        return
    import torch.distributed as dist  # deferred: heavy

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def lower_priority(nice: int, threads: int):
    """Make this process yield the CPU to the app: raise its nice value to ``nice`` (never
    lower it: that needs root) and cap torch at ``threads`` threads (through
    ``OMP_NUM_THREADS`` before torch is imported, and on torch itself when it already is).

    Returns:
        A function that puts the thread settings back (for callers in a longer-lived process:
        tests, ``core.simulate``); the priority stays lowered.
    """
    current = os.nice(0)
    if nice > current:
        os.nice(nice - current)
    saved_env = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    saved_torch = None
    for key in saved_env:
        os.environ[key] = str(threads)
    if "torch" in sys.modules:
        import torch  # deferred: torch takes seconds to import; only model work needs it

        saved_torch = torch.get_num_threads()
        torch.set_num_threads(threads)

    def restore() -> None:
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if saved_torch is not None:
            import torch  # deferred: torch takes seconds to import; only model work needs it

            torch.set_num_threads(saved_torch)

    return restore
