"""`LPATrainer` as a transformers user meets it (issue 40): their collators (padded, either side), the
tokenizer they give, the Trainer's weight-decay groups, per-depth evaluation, predict()'s alignment."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers", reason="the hf extra is not installed (pip install 'lpa[hf]')")
pytest.importorskip("tokenizers", reason="the hf extra is not installed (pip install 'lpa[hf]')")

from lpa_core.errors import UsageError  # noqa: E402
from lpa_cli.formats.tokenizer import BYTES  # noqa: E402
from lpa_cli.integrations.transformers import LPATrainer, lpa_model  # noqa: E402
from tests.test_hf import bpe_tokenizer, build, save  # noqa: E402


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    path = save(build("llama", bos_token_id=0, eos_token_id=1), tmp_path_factory.mktemp("m"), "llama")
    bpe_tokenizer(path)
    return path


def _tok(path: Path, side: str = "right"):
    return transformers.PreTrainedTokenizerFast(tokenizer_file=str(path / "tokenizer.json"), pad_token="</s>", eos_token="</s>",
                                                bos_token="<s>", padding_side=side)


TEXTS = ["the licence is granted", "you may copy and distribute verbatim copies of this licence document",
         "no warranty", "the program is distributed in the hope that it will be useful"]


def _args(tmp_path: Path, **extra) -> transformers.TrainingArguments:
    return transformers.TrainingArguments(str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=4, report_to=[], use_cpu=True,
                                          save_strategy="no", disable_tqdm=True, logging_steps=1, **extra)


@pytest.mark.parametrize("side", ["right", "left"])
def test_the_causal_lm_collator_gives_the_losses_of_the_rows_unpadded(llama, side):
    """DataCollatorForLanguageModeling pads (either side), masks and sets -100 on padding: the per-depth
    losses of the padded batch are the token-weighted losses of each row run alone."""
    tok = _tok(llama, side)
    lpa = lpa_model(llama, context=32, tokenizer=tok).eval()
    rows = [{"input_ids": tok(t)["input_ids"]} for t in TEXTS]
    batch = transformers.DataCollatorForLanguageModeling(tok, mlm=False)(rows)
    assert batch["attention_mask"].min() == 0  # really padded
    lpa(**batch)
    padded = lpa.last.losses
    sums, count = 0, 0
    for r in rows:
        ids = torch.tensor([r["input_ids"]])
        lpa(input_ids=ids, labels=ids)
        n = ids.shape[1] - 1
        sums, count = sums + lpa.last.losses * n, count + n
    torch.testing.assert_close(padded, sums / count, rtol=1e-5, atol=1e-6)


def test_trainer_trains_with_the_collators_transformers_users_pass(llama, tmp_path):
    tok = _tok(llama)
    rows = [{"input_ids": tok(t)["input_ids"]} for t in TEXTS * 4]
    trainer = LPATrainer(model=lpa_model(llama, context=32, tokenizer=tok), args=_args(tmp_path), train_dataset=rows,
                         data_collator=transformers.DataCollatorForLanguageModeling(tok, mlm=False))
    trainer.train()
    logged = [e for e in trainer.state.log_history if "loss_depth_0" in e]
    assert len(logged) == 2 and all(torch.isfinite(torch.tensor(e["loss_depth_3"])) for e in logged)
    trainer = LPATrainer(model=llama, args=_args(tmp_path), train_dataset=rows, processing_class=tok)  # the default collator pads
    trainer.train()
    assert trainer.model.tokenizer is not BYTES and trainer.model.tokenizer.vocab_size == 300


def test_classification_with_dynamic_padding_pools_only_real_tokens(tmp_path):
    """DataCollatorWithPadding (token_type_ids, attention_mask): each text's logits in a padded batch are
    its logits alone (the pooling reads the mask)."""
    path = save(build("bert"), tmp_path, "bert")
    bpe_tokenizer(path)
    tok = _tok(path)
    lpa = lpa_model(path, kind="classification", num_labels=2, context=32, tokenizer=tok).eval()
    rows = [dict(enc, token_type_ids=[0] * len(enc["input_ids"]), labels=i % 2) for i, enc in enumerate(map(tok, TEXTS))]  # BERT's fields
    batch = transformers.DataCollatorWithPadding(tok)(rows)
    assert "token_type_ids" in batch and batch["attention_mask"].min() == 0
    together = lpa(**batch)["logits"]
    for i, r in enumerate(rows):
        alone = lpa(input_ids=torch.tensor([r["input_ids"]]), labels=torch.tensor([r["labels"]]))["logits"]
        torch.testing.assert_close(together[i : i + 1], alone, rtol=1e-4, atol=1e-5)


def test_a_hub_model_without_its_tokenizer_is_refused_not_read_as_bytes(llama, tmp_path, monkeypatch):
    import huggingface_hub.constants as hub

    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    model = transformers.AutoModelForCausalLM.from_pretrained(llama)
    model.name_or_path = "some-org/tiny-llama"  # as from_pretrained("some-org/tiny-llama") leaves it
    with pytest.raises(UsageError, match="processing_class"):
        lpa_model(model, context=16)
    # the files in the local hub cache (huggingface_hub's own layout) are found, and nothing is downloaded
    repo = tmp_path / "cache" / "models--some-org--tiny-llama"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "snapshots" / "abc123" / "tokenizer.json").write_bytes((llama / "tokenizer.json").read_bytes())
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "cache"))
    made = lpa_model(model, context=16)
    assert made.tokenizer.vocab_size == 300 and made.cfg.model.init == "some-org/tiny-llama"


def test_weight_decay_groups_are_a_plain_trainers(llama, tmp_path):
    """The same Llama in a plain Trainer and in LPATrainer: the same parameters decay (all seven norms
    excluded, where lpa's own names let only one through before)."""
    hf = transformers.AutoModelForCausalLM.from_pretrained(llama)
    plain = set(transformers.Trainer(model=hf, args=_args(tmp_path)).get_decay_parameter_names(hf))
    lpa = lpa_model(llama, context=16, tokenizer=_tok(llama))
    ours = LPATrainer(model=lpa, args=_args(tmp_path)).get_decay_parameter_names(lpa)
    mapped = {lpa.hf_names[n.removeprefix("model.")] for n in ours}
    assert mapped == plain & set(lpa.hf_names.values())
    assert not any("norm" in n for n in ours) and len([n for n in lpa.hf_names if "norm" in n]) == 7


def test_evaluate_reports_every_depth_and_predict_aligns_with_the_labels(llama, tmp_path):
    tok = _tok(llama)
    rows = [{"input_ids": tok(t)["input_ids"][:8], "labels": tok(t)["input_ids"][:8]} for t in TEXTS if len(tok(t)["input_ids"]) >= 8]
    trainer = LPATrainer(model=lpa_model(llama, context=16, tokenizer=tok), args=_args(tmp_path, per_device_eval_batch_size=2),
                         train_dataset=rows, eval_dataset=rows)
    metrics = trainer.evaluate()
    assert {f"eval_loss_depth_{k}" for k in range(4)} <= set(metrics)
    pred = trainer.predict(rows)
    assert pred.predictions.shape[:2] == pred.label_ids.shape  # logits[t] predicts labels[t + 1], as a causal LM's do


def test_the_checkpoint_records_what_the_trainer_ran(llama, tmp_path):
    from lpa_cli.formats.checkpoint import read_info
    from lpa_cli.formats.tokenizer import read_tokenizer

    tok = _tok(llama)
    rows = [{"input_ids": tok(t)["input_ids"][:8], "labels": tok(t)["input_ids"][:8]} for t in TEXTS]
    args = _args(tmp_path, lr_scheduler_type="constant", warmup_steps=1, gradient_accumulation_steps=2, bf16=True)
    trainer = LPATrainer(model=lpa_model(llama, context=16, tokenizer=tok), args=args, train_dataset=rows)
    trainer.train()
    trainer.save_model(str(tmp_path / "final"))
    info = read_info(tmp_path / "final" / "lpa.safetensors")
    t = info.config.train
    assert (t.schedule, t.warmup, t.precision, t.grad_accum) == ("constant", 1, "bf16", 2)
    assert info.training["trainer_settings"]["lr_scheduler_type"] == "constant"
    assert read_tokenizer(info).vocab_size == 300  # the processing_class's, not bytes


def test_save_model_writes_a_transformers_model_and_resume_is_exact(llama, tmp_path):
    """Every checkpoint folder is a Hugging Face model folder (from_pretrained loads it; its logits are the
    final depth's) with lpa.safetensors beside it, and train(resume_from_checkpoint=...) from it ends at
    the uninterrupted run's tensors; to_transformers(depth) is the same code in process."""
    tok = _tok(llama)
    rows = [{"input_ids": tok(t)["input_ids"][:8], "labels": tok(t)["input_ids"][:8]} for t in TEXTS * 2]

    def trainer(out: str, steps: int = 4) -> LPATrainer:
        args = transformers.TrainingArguments(str(tmp_path / out), max_steps=steps, per_device_train_batch_size=2, report_to=[], use_cpu=True,
                                              save_strategy="steps", save_steps=2, disable_tqdm=True, seed=0, learning_rate=1e-3)
        return LPATrainer(model=lpa_model(llama, context=16, tokenizer=tok), args=args, train_dataset=rows, processing_class=tok)

    whole = trainer("whole")
    whole.train()
    folder = tmp_path / "whole" / "checkpoint-2"
    assert (folder / "lpa.safetensors").is_file() and (folder / "config.json").is_file()
    loaded = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = torch.tensor([rows[0]["input_ids"]])
    whole.save_model(str(tmp_path / "final"))
    final = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "final").eval()
    lpa = whole.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(final(ids).logits, lpa.model(ids), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(lpa.to_transformers(2).eval()(ids).logits, lpa.model.predictions(ids, [2])[0], rtol=1e-4, atol=1e-5)
    assert transformers.AutoTokenizer.from_pretrained(tmp_path / "final")("no warranty")["input_ids"] == tok("no warranty")["input_ids"]
    assert not torch.equal(loaded(ids).logits, final(ids).logits)  # checkpoint-2 is the model at step 2
    resumed = trainer("resumed")
    resumed.train(resume_from_checkpoint=str(folder))
    for (name, a), b in zip(whole.model.model.state_dict().items(), resumed.model.model.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.slow  # two processes start torch and transformers: 25 s on 2 cores
def test_under_torchrun_ddp_the_per_depth_losses_are_one_processs(llama, tmp_path):
    """Two CPU processes (gloo) with half the batch each against one process with the whole: the Trainer
    drives DDP, lpa's loss runs inside the wrapped module's forward, and the logged per-depth losses
    (summed over the processes) are the single process's."""
    import json
    import os
    import subprocess
    import sys

    script = str(Path(__file__).with_name("trainer_ddp_run.py"))
    env = os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, script, str(llama), str(tmp_path / "one.json"), "4"], env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    torchrun = Path(sys.executable).with_name("torchrun")
    two = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", script, str(llama), str(tmp_path / "two.json"), "2"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    single, ddp = json.loads((tmp_path / "one.json").read_text()), json.loads((tmp_path / "two.json").read_text())
    assert len(single) == len(ddp) == 3
    for a, b in zip(single, ddp):
        assert a.keys() == b.keys() and all(abs(a[k] - b[k]) <= 1e-5 * max(1, abs(a[k])) for k in a), (a, b)
    from safetensors.torch import load_file

    x, y = (load_file(str(tmp_path / f"{n}.model" / "lpa.safetensors")) for n in ("one", "two"))
    assert x.keys() == y.keys() and all(torch.allclose(x[k], y[k], atol=1e-6) for k in x)  # the same model saved


@pytest.mark.slow
def test_fsdp2_over_two_processes_equals_one_process(llama, tmp_path):
    """lpa's model sharded as Accelerate's FSDP 2 shards it (its transformer-based policy picks every block
    through `_no_split_modules`, then the root), over 2 CPU processes with gloo, 3 AdamW steps on one global
    batch: the per-depth losses and the final weights are one unsharded process's. (Accelerate selects FSDP
    only on accelerators, so the Trainer itself is not the driver here; docs/trainer.md has the GPU recipe.)"""
    import json
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    script = str(Path(__file__).with_name("fsdp_run.py"))
    env = os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, script, str(llama), str(tmp_path / "one.json")], env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    torchrun = Path(sys.executable).with_name("torchrun")
    two = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", script, str(llama), str(tmp_path / "two.json")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    single, sharded = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert len(single) == len(sharded) == 3 and single[0] != single[-1]  # it trained
    np.testing.assert_allclose(sharded, single, rtol=1e-6, atol=1e-6)
    x, y = (load_file(str(tmp_path / f"{n}.safetensors")) for n in ("one", "two"))
    assert x.keys() == y.keys() and all(torch.allclose(x[k], y[k], atol=1e-6) for k in x)
