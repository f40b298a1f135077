"""`LPATrainer` (transformers' Trainer with lpa's objective) against `lpa train --init`: the same
weights, batches, seed and settings give the same per-depth losses, step by step, on a tiny Llama and
on the real pretrained MiniLM; its checkpoints are read by lpa's commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="the hf extra is not installed (pip install 'lpa[hf]')")
pytest.importorskip("tokenizers", reason="the hf extra is not installed (pip install 'lpa[hf]')")

from lpa_cli.config import ModelConfig, ObjectiveConfig, RunConfig, TaskConfig, TrainConfig  # noqa: E402
from lpa_cli.data.splits import batch_indices  # noqa: E402
from lpa_cli.data.tasks import load_task  # noqa: E402
from lpa_cli.integrations.transformers import CHECKPOINT, LPATrainer, lpa_model  # noqa: E402
from lpa_cli.models.open import resolve_init  # noqa: E402
from lpa_cli.training.trainer import Callbacks, train  # noqa: E402
from tests.cli_helpers import run, run_json  # noqa: E402
from tests.test_hf import bpe_tokenizer, build, minilm, save  # noqa: E402


class Record(Callbacks):
    def __init__(self) -> None:
        self.steps: list[dict[int, float]] = []

    def on_progress(self, step: int, loss: float, per_depth: dict) -> None:
        self.steps.append({k: float(v) for k, v in per_depth.items()})


def lpa_run(cfg: RunConfig, out: Path) -> list[dict[int, float]]:
    record = Record()
    train(resolve_init(cfg), out, force=True, callbacks=record)
    return record.steps


def step_rows(cfg: RunConfig, lm: bool) -> list[dict[str, torch.Tensor]]:
    """lpa's batches, step by step, as Hugging Face rows (LM: the window plus its last target, labels unshifted)."""
    task = load_task(resolve_init(cfg).task)
    split, t = task.train, cfg.train
    rows = []
    for step in range(t.steps):
        b = split.batch(batch_indices(len(split), t.batch_size, t.seed, step, split.draw_rows()))
        for i in range(len(b)):
            if lm:
                ids = torch.cat([b.x[i], b.y[i, -1:]])
                rows.append({"input_ids": ids, "labels": ids.clone()})
            else:
                rows.append({"input_ids": b.x[i], "attention_mask": b.mask[i], "labels": b.y[i]})
    return rows


def trainer_run(source, cfg: RunConfig, rows, out: Path, num_labels: int | None = None, training: dict | None = None,
                **objective) -> tuple[list[dict[int, float]], LPATrainer]:
    """``training``: further TrainingArguments (``bf16=True``)."""
    t = cfg.train
    args = transformers.TrainingArguments(str(out), max_steps=t.steps, per_device_train_batch_size=t.batch_size, learning_rate=t.lr,
                                          lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0, max_grad_norm=0.0, optim="adamw_torch",
                                          train_sampling_strategy="sequential", logging_steps=1, report_to=[], seed=t.seed, use_cpu=True,
                                          save_strategy="no", disable_tqdm=True, **(training or {}))
    model = lpa_model(source, objective=dict(name=cfg.objective.name, **objective), num_labels=num_labels, context=cfg.task.options["context"],
                      options=cfg.model.options, seed=t.seed)
    trainer = LPATrainer(model=model, args=args, train_dataset=rows)
    trainer.train()
    logs = [e for e in trainer.state.log_history if "loss_depth_0" in e]
    return [{int(k.rsplit("_", 1)[1]): v for k, v in e.items() if k.startswith("loss_depth_")} for e in logs], trainer


def assert_same_losses(ours, theirs, tol=2e-5):
    assert len(ours) == len(theirs) and ours
    for step, (a, b) in enumerate(zip(ours, theirs)):
        assert a.keys() == b.keys(), step
        for k in a:
            assert abs(a[k] - b[k]) <= tol * max(1.0, abs(a[k])), (step, k, a[k], b[k])
    assert any(abs(ours[0][k] - ours[-1][k]) > 1e-3 for k in ours[0])  # it trained: the losses moved


@pytest.fixture
def llama(tmp_path):
    path = save(build("llama", bos_token_id=0, eos_token_id=1), tmp_path, "llama")
    bpe_tokenizer(path)
    text = tmp_path / "text.txt"
    from lpa_cli.data.text import builtin_corpus

    text.write_bytes(builtin_corpus()[:20000])
    return path, text


def _llama_cfg(path: Path, text: Path, **objective) -> RunConfig:
    return RunConfig(ModelConfig(init=str(path)), TaskConfig(name=f"text:{text}", options={"context": 16}, n_test=8),
                     ObjectiveConfig(name="lpa", **objective),
                     TrainConfig(steps=4, batch_size=4, lr=2e-3, optimizer="adamw", schedule="linear", threads=1, seed=3))


@pytest.mark.parametrize("objective", [{}, {"lpa_lambda": 0.1, "loss_power": 0.5}, {"align": "kl", "head_loss": "chunked", "head_chunk_mb": 1}],
                         ids=["sum", "lambda-power", "kl-chunked"])
def test_llama_losses_equal_lpa_train(llama, tmp_path, objective):
    path, text = llama
    cfg = _llama_cfg(path, text, **objective)
    ours = lpa_run(cfg, tmp_path / "lpa.safetensors")
    theirs, _ = trainer_run(path, cfg, step_rows(cfg, lm=True), tmp_path / "trainer", **objective)
    assert_same_losses(ours, theirs)


def test_trainer_checkpoints_are_read_by_lpa_commands(llama, tmp_path):
    path, text = llama
    cfg = _llama_cfg(path, text)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(path)  # a loaded model, as Trainer users have one
    loaded.name_or_path = str(path)
    _, trainer = trainer_run(loaded, cfg, step_rows(cfg, lm=True), tmp_path / "trainer")
    trainer.save_model(str(tmp_path / "final"))
    ckpt = tmp_path / "final" / CHECKPOINT
    info = run_json("info", ckpt)
    assert info["model"]["arch"] == "decoder" and info["depth"] == 3
    trace = tmp_path / "t.h5"
    run_json("trace", ckpt, "--data", f"text:{text}", "--limit", "8", "-o", trace)
    mono = run("monotonicity", trace, "--json")  # a 4-step random model: exit 1 (not monotone / learned nothing) is an answer
    assert mono.exit_code in (0, 1) and len(json.loads(mono.stdout)["error_curve"]) == 4
    cmp = run("compare", "--run", f"trainer={trace}", "--run", f"again={trace}", "--no-measure", "-o", tmp_path / "c.html", "--plotlyjs", "directory")
    assert cmp.exit_code == 0 and (tmp_path / "c.html").exists(), cmp.output
    out = tmp_path / "hf"
    run_json("export", ckpt, "--at", "2", "--format", "hf", "-o", out)
    assert transformers.AutoConfig.from_pretrained(out).num_hidden_layers == 2
    gen = run("generate", ckpt, "--prompt", "The licence", "--max-new-tokens", "4", "--strategy", "self-speculative", "--draft-depth", "1")
    assert gen.exit_code == 0, gen.output


def test_minilm_classification_losses_equal_lpa_train(tmp_path):
    model = minilm(tmp_path)
    data = tmp_path / "passages.csv"
    from lpa_cli.workflows.reproduce_llm import licence_texts, passages

    data.write_text(passages(licence_texts()), encoding="utf-8")
    cfg = RunConfig(ModelConfig(init=str(model), options={"pool": "mean"}), TaskConfig(name=f"classify:{data}", options={"context": 32, "truncate": True}),
                    ObjectiveConfig(name="lpa"), TrainConfig(steps=3, batch_size=4, lr=2e-4, optimizer="adamw", schedule="linear", threads=2, seed=1))
    ours = lpa_run(cfg, tmp_path / "lpa.safetensors")
    theirs, _ = trainer_run(model, cfg, step_rows(cfg, lm=False), tmp_path / "trainer", num_labels=5)
    assert_same_losses(ours, theirs)


def test_resume_from_a_trainer_checkpoint_with_tied_weights(tmp_path):
    """GPT-2 ties its head to the embedding: stored once, resumed to the same weights as an unbroken run."""
    rows = []
    for i in range(32):
        ids = torch.randint(0, 300, (17,), generator=torch.Generator().manual_seed(i))
        rows.append({"input_ids": ids, "labels": ids})

    def args():
        return transformers.TrainingArguments(str(tmp_path), max_steps=4, per_device_train_batch_size=4, save_steps=2, logging_steps=2,
                                              report_to=[], use_cpu=True, disable_tqdm=True)

    model = build("gpt2")
    whole = LPATrainer(model=lpa_model(model, tokenizer="bytes", seed=0), args=args(), train_dataset=rows)  # random ids: no tokenizer to store
    whole.train()
    assert (tmp_path / "checkpoint-2" / CHECKPOINT).exists()
    resumed = LPATrainer(model=lpa_model(model, tokenizer="bytes", seed=0), args=args(), train_dataset=rows)
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    a, b = whole.model.model.state_dict(), resumed.model.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["embed.tok.weight"], model.transformer.wte.weight)  # it trained (a copy: the HF model is untouched)
