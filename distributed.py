"""Several processes under torchrun: DistributedDataParallel, with Progtuning's stage switches.

    torchrun --nproc_per_node N run.py --task mnli --mode pt ...      (one process per GPU; gloo on CPU)

Without torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK), or with WORLD_SIZE=1, there is one process and
nothing here does anything. With several:

- --batch-size stays the global batch. Every process walks the same seeded order of the training rows and
  takes its own contiguous share of each global batch (share), so the recipe, the step count, the lr
  schedule, the stage boundaries and the parameter counts are those of a one-process run. Each process
  scales its summed loss so that DDP's average of the processes' gradients is the gradient of the global
  batch's mean loss, also when a short last batch splits unevenly (or leaves a process no row at all).
- Only rank 0 evaluates, prints and writes files (results, logs, predictions, checkpoints); the others wait
  at a barrier or in the next step's collective. Rank 0 holds the output folder's lock (records.output_lock)
  from before any process writes. --output-dir must be a folder every process can read
  (one machine, or a shared file system), since --resume reads the checkpoint in every process.
- Dropout: each rank draws from its own generator, seeded from (seed, rank); checkpoints keep every rank's
  state, so --resume continues each stream.
- Every collective has the process group's timeout (--dist-timeout): a process that died or hung makes the
  others fail with a clear line instead of waiting forever.

    world_size_from_environment() -> int
    init(device, timeout_minutes) -> World        (process group, this process's device)
    WORLD                                         the current World (a one-process World by default)
    share(batch, world) -> (batch share, loss scale)
    wrap(model, world) -> the DDP wrapper (rebuilt at every stage switch; see wrap) or the model itself
    abandon(message)                              one line and exit 1 after a peer failed (see abandon)
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
import re
import sys
from dataclasses import dataclass
from typing import NoReturn

import torch
import torch.distributed as dist
from torch import nn

from model import part_of

ENV_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
# How gloo and NCCL word a collective that failed because a peer died or hung (they raise RuntimeError).
COMMUNICATION_FAILURE = re.compile(r"gloo|nccl|connection|timed out|timeout|peer", re.IGNORECASE)


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


WORLD = World()


def world_size_from_environment() -> int:
    """WORLD_SIZE as torchrun sets it (1 without torchrun); checked before anything starts."""
    raw = os.environ.get("WORLD_SIZE")
    if raw is None:
        return 1
    try:
        size = int(raw)
    except ValueError:
        raise ValueError(f"WORLD_SIZE is {raw!r} in the environment; expected a whole number (torchrun sets it)") \
            from None
    if size < 1:
        raise ValueError(f"WORLD_SIZE is {size} in the environment; expected 1 or more")
    return size


def init(device: str, timeout_minutes: float) -> tuple[World, str]:
    """Join torchrun's process group (NCCL on CUDA, gloo on CPU) and return the World and this process's
    device (cuda:LOCAL_RANK on CUDA). One process: no group, the device as given."""
    global WORLD
    size = world_size_from_environment()
    if size == 1:
        WORLD = World()
        return WORLD, device
    missing = [name for name in ENV_VARIABLES if name not in os.environ]
    if missing:
        raise ValueError(f"WORLD_SIZE is {size} but {', '.join(missing)} is not set; launch with torchrun "
                         "(it sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT)")
    world = World(rank=int(os.environ["RANK"]), size=size, local_rank=int(os.environ["LOCAL_RANK"]))
    if device.startswith("cuda"):
        device = f"cuda:{world.local_rank}"
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo",
                            timeout=datetime.timedelta(minutes=timeout_minutes))
    WORLD = world
    return world, device


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def abandon(message: str) -> NoReturn:
    """Print `message` and end this process with exit code 1 at once, after a collective failed because a
    peer died or hung. Tearing down a group whose peer is gone is not safe: destroy_process_group can wait
    on the dead peer, and gloo's threads, torn down at interpreter exit after a reset connection, sometimes
    call std::terminate (exit -6, "terminate called without an active exception": 5 of 59 runs of the
    killed-peer test did so on 2 CPU cores). So neither runs: os._exit skips both. Nothing is lost: every
    file is written and closed as it is produced (checkpoints, results, logs), and only the standard
    streams need flushing."""
    print(message, file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)


def barrier() -> None:
    if WORLD.distributed:
        dist.barrier()


@contextlib.contextmanager
def main_first():
    """Rank 0 does the enclosed work first (a download, say) while the others wait, then the others do it
    (and find the files there)."""
    if not WORLD.main:
        barrier()
    yield
    if WORLD.main:
        barrier()


def share(batch: dict[str, torch.Tensor], world: World) -> tuple[dict[str, torch.Tensor], float]:
    """This process's rows of a global batch and the factor its summed loss is multiplied by.

    The rows split into `size` contiguous shares as evenly as they can (the first ones get one more). With
    n rows in the global batch the factor is size / n: DDP averages the processes' gradients, so the result
    is the gradient of the global mean, 1/n times the sum over all rows. A process whose share is empty (a
    last batch with fewer rows than processes) still runs one row, with factor 0, because every process
    must take part in the gradient all-reduce."""
    rows = len(batch["input_ids"])
    if not world.distributed:
        return batch, 1.0 / rows
    base, extra = divmod(rows, world.size)
    start = world.rank * base + min(world.rank, extra)
    stop = start + base + (1 if world.rank < extra else 0)
    if stop == start:
        return {key: value[:1] for key, value in batch.items()}, 0.0
    return {key: value[start:stop] for key, value in batch.items()}, world.size / rows


def wrap(model: nn.Module, world: World) -> nn.Module:
    """A DistributedDataParallel wrapper for the current stage, or the model itself for one process.

    Why a new wrapper at every stage switch: DDP registers its gradient hooks and builds its all-reduce
    buckets only for the parameters that require grad when it is constructed. After a switch that freezes
    blocks, a stale wrapper waits for gradients that never come ("Expected to have finished reduction");
    a parameter that starts training after construction (a schedule that grows) would never be reduced at
    all, and the processes' weights would drift apart silently. Rebuilding around the same model costs one
    broadcast of the weights per stage (they are identical already)."""
    if not world.distributed:
        return model
    on_cuda = next(model.parameters()).is_cuda
    return nn.parallel.DistributedDataParallel(model, device_ids=[world.local_rank] if on_cuda else None)


def _device_of(world: World) -> torch.device:
    backend = dist.get_backend() if dist.is_initialized() else "gloo"
    return torch.device(f"cuda:{world.local_rank}") if backend == "nccl" else torch.device("cpu")


def summed(values: torch.Tensor, world: World) -> torch.Tensor:
    """`values` (a float64 tensor) summed over the processes: one small all-reduce, at the training loop's
    log points and epoch ends (training.Progress), where the processes also agree whether to stop, so that
    every process stops after the same step and rank 0's checkpoint is everybody's."""
    if not world.distributed:
        return values
    values = values.to(_device_of(world), copy=True)
    dist.all_reduce(values)
    return values


def any_of(flag: bool, world: World) -> bool:
    return summed(torch.tensor([float(flag)], dtype=torch.float64), world).item() > 0


def sum_tensors(tensors: list[torch.Tensor], world: World) -> None:
    """Sum the tensors over the processes, in place."""
    if world.distributed:
        for tensor in tensors:
            dist.all_reduce(tensor)


def gather(obj, world: World) -> list:
    """Every process's `obj`, in rank order (rank 0's first); [obj] for one process."""
    if not world.distributed:
        return [obj]
    gathered = [None] * world.size
    dist.all_gather_object(gathered, obj)
    return gathered


def model_parts(model: nn.Module) -> dict[str, list[str]]:
    """Parameter names per part, in the paper's terms: E, blocks 1..L, H."""
    parts: dict[str, list[str]] = {}
    for name, _ in model.named_parameters():
        part, block = part_of(name)
        parts.setdefault(f"block {block + 1}" if part == "block" else part[0].upper(), []).append(name)
    return parts


def part_digests(model: nn.Module) -> dict[str, str]:
    """SHA-256 (first 16 hex digits) of each part's parameter bytes, to prove bitwise what stayed frozen
    and that the processes hold the same weights."""
    params = dict(model.named_parameters())
    digests = {}
    for part, names in model_parts(model).items():
        digest = hashlib.sha256()
        for name in names:
            digest.update(params[name].detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        digests[part] = digest.hexdigest()[:16]
    return digests


def agreed_digests(model: nn.Module, world: World) -> dict[str, str]:
    """part_digests, checked equal on every process: DDP keeps replicas identical only if every process
    applied the same updates, which a bug in sharding or in a stage switch would break."""
    digests = part_digests(model)
    for rank, theirs in enumerate(gather(digests, world)):
        differing = [part for part in digests if theirs[part] != digests[part]]
        if differing:
            raise RuntimeError(f"the processes' weights diverged: {', '.join(differing)} differ between rank "
                               f"{world.rank} and rank {rank}")
    return digests
