"""Run by tests/test_trainer_as_users_run_it.py, alone or under `torchrun --nproc_per_node=2` (DDP over gloo):
LPATrainer on a tiny Llama whose rows all have the same length; the per-depth losses it logs written as
JSON, the model saved beside it. (FSDP through the Trainer needs an accelerator: with ``use_cpu`` the
Trainer runs DDP whatever ``fsdp`` says, measured with transformers 5.25; `fsdp_run.py` shards the model
as Accelerate's FSDP 2 would.)"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import transformers

from lpa_cli.integrations.transformers import LPATrainer, lpa_model


def main(model_dir: str, out: str, per_device: int) -> None:
    tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(Path(model_dir) / "tokenizer.json"), pad_token="</s>")
    ids = tok("the licence is granted to copy and distribute verbatim copies of this document " * 8)["input_ids"]
    rows = [{"input_ids": ids[i : i + 12], "labels": ids[i : i + 12]} for i in range(0, 12 * 16, 12)]  # equal lengths: equal token counts
    args = transformers.TrainingArguments(str(Path(out).parent / "run"), max_steps=3, per_device_train_batch_size=per_device, learning_rate=1e-3,
                                          logging_steps=1, report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True, seed=0,
                                          train_sampling_strategy="sequential",
                                          ddp_backend="gloo" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None)
    trainer = LPATrainer(model=lpa_model(model_dir, context=16, tokenizer=tok), args=args, train_dataset=rows)
    trainer.train()
    trainer.save_model(str(Path(out).with_suffix(".model")))
    if trainer.is_world_process_zero():
        logged = [{k: v for k, v in e.items() if k.startswith("loss_depth_")} for e in trainer.state.log_history if "loss_depth_0" in e]
        Path(out).write_text(json.dumps(logged))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
