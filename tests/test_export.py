from pathlib import Path

import pytest
import torch

from lpa_cli.models.open import load_checkpoint
from lpa_cli.data.tasks import load_task
from tests.cli_helpers import assert_clean_error, run, run_json

SAMPLES = Path(__file__).resolve().parents[1] / "sample_checkpoints"


@pytest.mark.parametrize("name,depth", [("mlp-stripe-lpa", 3), ("resnet-digits-lpa", 2), ("vit-digits-lpa", 4), ("gpt-text-lpa", 1)])
def test_export_gives_exactly_the_depth_k_predictions(name, depth, tmp_path):
    src = SAMPLES / f"{name}.safetensors"
    out = tmp_path / "small.safetensors"
    data = run_json("export", src, "--at", str(depth), "-o", out)
    assert data["parameters"] < data["parameters_of_parent"]
    big, small = load_checkpoint(src), load_checkpoint(out)
    assert small.model.num_blocks == depth and small.config.model.depth == depth
    x, _ = load_task(big.config.task).test.tensors()
    x = x[:64]
    with torch.no_grad():
        torch.testing.assert_close(small.model(x), big.model.predictions(x, [depth])[0], rtol=0, atol=0)
    info = run_json("info", out)
    assert info["parent"]["sha256"] == big.sha256 and info["parent"]["depth"] == depth
    assert "exported from" in run("info", out).stdout


def test_export_errors(tmp_path):
    src = SAMPLES / "mlp-stripe-lpa.safetensors"
    assert_clean_error(run("export", src, "--at", "9", "-o", tmp_path / "x.safetensors"), "between 1 and 8")
    assert_clean_error(run("export", src, "--at", "0", "-o", tmp_path / "x.safetensors"), "between 1 and 8")
    (tmp_path / "exists.safetensors").write_bytes(b"keep")
    assert_clean_error(run("export", src, "--at", "2", "-o", tmp_path / "exists.safetensors"), "already exists")
    assert (tmp_path / "exists.safetensors").read_bytes() == b"keep"
