"""Several processes under torchrun: data parallel (DDP) or fully sharded (FSDP2), and the helpers
that make saving and resuming work the same in every case.

Each global batch is split across ranks; only rank 0 evaluates and writes. With ``fsdp`` every
residual block and the whole model (embedding and head included) are ``fully_shard``-ed; checkpoints
are gathered to rank 0 and saved as one ordinary lpa file, so every other command reads them as
always. Backends: NCCL on GPUs, gloo on CPU (``LPA_DIST_BACKEND=gloo`` forces it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from lpa_core.errors import UsageError


@dataclass
class World:
    rank: int = 0
    size: int = 1
    created: bool = False  # whether we created the process group (and must destroy it)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    def close(self) -> None:
        if self.created and dist.is_initialized():
            dist.destroy_process_group()

    def all_true(self, flag: bool) -> bool:
        """Whether ``flag`` holds on every rank (so all ranks take the same branch)."""
        if self.size == 1:
            return flag
        t = torch.tensor([0 if flag else 1])
        dist.all_reduce(t)
        return int(t) == 0


def join() -> World:
    """The process group torchrun describes (created when missing), or a world of one."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    created = False
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and os.environ.get("LPA_DIST_BACKEND") != "gloo" else "gloo"
        dist.init_process_group(backend)
        created = True
    return World(dist.get_rank(), dist.get_world_size(), created)


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def wrap(step_module: nn.Module, model: nn.Module, parallel: str, world: World, find_unused: bool) -> nn.Module:
    """The module whose forward the trainer calls: as it is, under DDP, or fully sharded."""
    if world.size == 1:
        return step_module
    if parallel == "fsdp":
        try:
            from torch.distributed.fsdp import fully_shard
        except ImportError:
            raise UsageError("--parallel fsdp needs torch >= 2.6 (torch.distributed.fsdp.fully_shard)") from None
        for block in model.blocks:
            fully_shard(block)
        fully_shard(step_module)  # the root: embedding, head and whatever is left
        return step_module
    return nn.parallel.DistributedDataParallel(step_module, find_unused_parameters=find_unused)


def full_model_state(model: nn.Module, parallel: str, world: World) -> dict[str, Tensor]:
    """The whole model's state on CPU (every rank must call it under FSDP; rank 0 gets the tensors)."""
    if world.size > 1 and parallel == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def full_optimizer_state(model: nn.Module, opt: torch.optim.Optimizer, parallel: str, world: World) -> dict:
    if world.size > 1 and parallel == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(model, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return opt.state_dict()


def load_full_state(model: nn.Module, opt: torch.optim.Optimizer, model_state: dict, opt_state: dict, parallel: str, world: World) -> None:
    if world.size > 1 and parallel == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

        options = StateDictOptions(full_state_dict=True)
        set_model_state_dict(model, model_state, options=options)
        set_optimizer_state_dict(model, opt, opt_state, options=options)
        return
    model.load_state_dict(model_state)
    opt.load_state_dict(opt_state)
