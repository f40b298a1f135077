"""Run by tests/test_trainer_as_users_run_it.py, alone or under `torchrun --nproc_per_node=2` (gloo): lpa's
model of a tiny Llama sharded with FSDP2 (`fully_shard` on every block, then on the root: what Accelerate's
FSDP 2 does on GPUs, which it does not select on CPUs), trained 3 AdamW steps on one global batch split
over the processes. The per-depth losses (averaged over processes) and the final weights are written as
JSON and safetensors. The objective runs inside the sharded module's forward, where FSDP has the
parameters gathered."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import transformers

from lpa_cli.integrations.transformers import lpa_model


def main(model_dir: str, out: str) -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1:
        dist.init_process_group("gloo")
    torch.manual_seed(0)
    tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(Path(model_dir) / "tokenizer.json"), pad_token="</s>")
    ids = tok("the licence is granted to copy and distribute verbatim copies of this document " * 8)["input_ids"]
    rows = torch.tensor([ids[i : i + 12] for i in range(0, 12 * 8, 12)])  # 8 rows of equal length: equal token counts
    model = lpa_model(model_dir, context=16, tokenizer=tok)
    if world > 1:  # the modules Accelerate's FSDP 2 would wrap: its transformer-based policy on `_no_split_modules`
        from accelerate.utils import FullyShardedDataParallelPlugin
        from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy
        from torch.distributed.fsdp import fully_shard

        plugin = FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="transformer_based_wrap", reshard_after_forward=True)
        policy = fsdp2_prepare_auto_wrap_policy(plugin, model)
        wrapped = [m for m in model.modules() if policy(m)]
        assert len(wrapped) == len(model.model.blocks), [type(m).__name__ for m in wrapped]
        for m in wrapped:
            fully_shard(m)
        fully_shard(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    mine = rows.chunk(world)[rank]
    logged = []
    for _ in range(3):
        out_ = model(input_ids=mine, labels=mine)
        out_["loss"].backward()
        opt.step()
        opt.zero_grad()
        losses = model.last.losses.detach().clone()
        if world > 1:
            dist.all_reduce(losses)
            losses /= world
        logged.append(losses.tolist())
    state = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone().contiguous() for k, v in model.model.state_dict().items()}
    if rank == 0:
        from safetensors.torch import save_file

        Path(out).write_text(json.dumps(logged))
        save_file(state, str(Path(out).with_suffix(".safetensors")))
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
