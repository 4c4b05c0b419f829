"""Devices and multi-process training: the small layer between the training loop and ``torch.distributed``.

``torchrun --nproc_per_node=N -m contractive train ...`` starts N copies of the CLI with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in their environment.
:func:`setup` turns that environment into a :class:`Context` (initialising the process group: gloo on
CPU, NCCL on CUDA) and a plain ``python`` process gets a single-process context, so the training loop
has one code path for both.

Gradients are averaged by :class:`~torch.nn.parallel.DistributedDataParallel`, which only sees
computation that goes through the wrapped module's ``forward``. The autoencoders expose their objective
as a ``loss(x)`` *method*, so :class:`LossModule` turns that method into a ``forward``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .config import PRECISIONS
from .errors import ContractiveError

DEVICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(device: str | torch.device | None = "auto", *, local_rank: int = 0) -> torch.device:
    """The ``torch.device`` a device option names; ``"auto"`` picks CUDA when available, else CPU.

    MPS is used only when asked for by name (``"mps"``): its float32 kernels are not yet a safe default.

    Parameters
    ----------
    device : {"auto", "cpu", "cuda", "mps"}, "cuda:N" or torch.device
    local_rank : int
        Under torchrun, a bare ``"cuda"`` means this process's GPU ``cuda:local_rank``.
    """
    if isinstance(device, torch.device):
        return device
    name = (device or "auto").lower()
    kind = name.split(":")[0]
    if kind not in DEVICES:
        raise ContractiveError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    if kind == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        kind, name = "cuda", "cuda"
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ContractiveError("device 'cuda' requested but no CUDA device is available (try --device cpu)")
        index = int(name.split(":")[1]) if ":" in name else local_rank
        if index >= torch.cuda.device_count():
            raise ContractiveError(f"cuda:{index} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
        return torch.device("cuda", index)
    if kind == "mps" and not _mps_available():
        raise ContractiveError("device 'mps' requested but the MPS backend is not available")
    return torch.device(kind)


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def check_precision(precision: str, device: torch.device) -> None:
    """Reject precisions the device cannot run (bf16 autocast needs CPU, MPS or a bf16-capable GPU)."""
    if precision not in PRECISIONS:
        raise ContractiveError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ContractiveError(f"{device} does not support bfloat16; use --precision 32")


def autocast(device: torch.device, precision: str):
    """Autocast context for the forward pass: bfloat16 matmuls when ``precision == "bf16"``, else a no-op.

    Models keep their contractive penalty in float32 (see :meth:`contractive.Autoencoder.loss`).
    """
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


@dataclass(frozen=True)
class Context:
    """Where this process sits in a (possibly single-process) training job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes files and prints."""
        return self.rank == 0

    def barrier(self) -> None:
        """All ranks wait here (a no-op in a single process)."""
        if self.distributed:
            if self.device.type == "cuda":
                dist.barrier(device_ids=[self.device.index])
            else:
                dist.barrier()

    def all_reduce_sum(self, values: Tensor) -> Tensor:
        """Element-wise sum of ``values`` over ranks (returned as a new tensor on ``values``' device)."""
        if not self.distributed:
            return values
        reduced = values.detach().clone().to(self.device)
        dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
        return reduced.to(values.device)

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (e.g. a run directory name chosen from the clock)."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0, device=self.device if self.device.type == "cuda" else None)
        return box[0]

    def shard(self, indices: Sequence[int] | Tensor) -> Tensor:
        """This rank's share of one *global* batch: every ``world_size``-th index starting at ``rank``.

        Like :class:`~torch.utils.data.DistributedSampler` applied per step rather than per epoch, so the
        union of the ranks' shards is exactly the single-process batch and the averaged gradient equals
        the single-process gradient.
        """
        indices = torch.as_tensor(indices)
        return indices[self.rank :: self.world_size]


def env_world_size() -> int:
    """``WORLD_SIZE`` as set by torchrun (1 when not launched by it)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ContractiveError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer") from None


def setup(device: str | torch.device | None = "auto") -> Context:
    """Build this process's :class:`Context`, joining the torchrun process group when there is one.

    The backend follows the device: NCCL for CUDA, gloo otherwise (gloo is PyTorch's CPU backend).
    Call :func:`teardown` at the end (``with session(device) as ctx:`` does both).
    """
    world_size = env_world_size()
    if world_size <= 1:
        return Context(device=resolve_device(device))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    resolved = resolve_device(device, local_rank=local_rank)
    if resolved.type == "mps":
        raise ContractiveError("multi-process training is not supported on MPS; use --device cpu or cuda")
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)
    if not dist.is_initialized():
        backend = "nccl" if resolved.type == "cuda" else "gloo"
        kwargs = {"device_id": resolved} if resolved.type == "cuda" else {}
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size, **kwargs)
    return Context(rank=rank, world_size=world_size, local_rank=local_rank, device=resolved)


def teardown(context: Context) -> None:
    """Leave the process group (no-op in a single process)."""
    if context.distributed and dist.is_initialized():
        dist.destroy_process_group()


class session:  # noqa: N801 - used as a context manager, reads like a function
    """``with session(device) as ctx:`` = :func:`setup` … :func:`teardown`, even on errors."""

    def __init__(self, device: str | torch.device | None = "auto"):
        self._device = device

    def __enter__(self) -> Context:
        self.context = setup(self._device)
        return self.context

    def __exit__(self, *exc) -> None:
        teardown(self.context)


class LossModule(nn.Module):
    """``forward(x)`` = ``model.loss(x)``: a module whose forward is the training objective.

    DistributedDataParallel registers its gradient all-reduce for computation done inside the wrapped
    module's ``forward``; wrapping the model's ``loss`` method this way keeps the contractive penalty
    inside that forward, so one ordinary ``backward()`` averages every gradient, penalty included.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return self.model.loss(x)


def wrap(model: nn.Module, context: Context) -> nn.Module:
    """The module the training loop calls: :class:`LossModule`, inside DDP when running distributed."""
    module = LossModule(model)
    if not context.distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [context.device.index] if context.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids)
