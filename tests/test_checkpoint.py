import json
import struct

import pytest
import torch
from safetensors.torch import save_file

from lpa_core.errors import CheckpointError, OutputExistsError
from lpa_cli.formats import checkpoint as ckpt_mod
from lpa_cli.formats.checkpoint import read_info, save_checkpoint
from lpa_cli.formats.hashes import tensor_hash
from lpa_cli.models.open import load_checkpoint
from lpa_cli.training.trainer import train
from tests.conftest import tiny_run


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "m.safetensors"
    result = train(tiny_run(steps=20), path)
    return path, result


def test_save_load_gives_identical_predictions(saved):
    path, result = saved
    loaded = load_checkpoint(path)
    x = torch.rand(50, 2) * 2 - 1
    with torch.no_grad():
        for a, b in zip(result.model.eval().predictions(x), loaded.model.predictions(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_metadata_round_trips(saved):
    path, result = saved
    info = read_info(path)
    assert info.config == result.config
    assert info.task == json.loads(json.dumps(result.task))
    assert info.metrics == result.metrics
    assert info.sha256 == result.sha256 == tensor_hash(result.model.state_dict())
    assert info.metadata["format"] == "lpa-checkpoint" and info.metadata["format_version"] == "2"


def test_refuses_to_overwrite_without_force(saved, tmp_path):
    path, result = saved
    before = path.read_bytes()
    with pytest.raises(OutputExistsError):
        save_checkpoint(path, result.model, result.config, result.task)
    assert path.read_bytes() == before


def test_interrupted_save_leaves_no_file(saved, tmp_path, monkeypatch):
    _, result = saved
    target = tmp_path / "new.safetensors"

    def exploding_save(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise RuntimeError("simulated crash in the middle of a save")

    monkeypatch.setattr(ckpt_mod, "save_file", exploding_save)
    with pytest.raises(RuntimeError):
        save_checkpoint(target, result.model, result.config, result.task)
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []  # the temporary file is gone too


def test_exception_during_overwrite_keeps_old_file(saved, tmp_path, monkeypatch):
    path, result = saved
    target = tmp_path / "keep.safetensors"
    target.write_bytes(path.read_bytes())
    monkeypatch.setattr(ckpt_mod, "save_file", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError):
        save_checkpoint(target, result.model, result.config, result.task, force=True)
    assert target.read_bytes() == path.read_bytes()


def _corrupt_cases(good: bytes):
    (n,) = struct.unpack("<Q", good[:8])
    yield "empty", b""
    yield "seven bytes", good[:7]
    yield "truncated", good[: len(good) // 2]
    yield "appended", good + b"\0\0\0\0"
    yield "huge header", struct.pack("<Q", 2**40) + good[8:]
    yield "pickle", b"\x80\x04\x95" + b"\0" * 64
    yield "zip", b"PK\x03\x04" + b"\0" * 64
    yield "not json", struct.pack("<Q", 4) + b"{{{{"
    yield "text", b"hello world, not a checkpoint at all"


def test_corrupt_and_foreign_files_raise_checkpoint_error(saved, tmp_path):
    path, _ = saved
    good = path.read_bytes()
    for name, data in _corrupt_cases(good):
        bad = tmp_path / f"{name.replace(' ', '_')}.safetensors"
        bad.write_bytes(data)
        with pytest.raises(CheckpointError) as err:
            load_checkpoint(bad)
        assert str(bad) in str(err.value), name


def test_foreign_safetensors_and_flipped_byte(saved, tmp_path):
    path, _ = saved
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(3)}, str(foreign))
    with pytest.raises(CheckpointError, match="not an lpa checkpoint"):
        load_checkpoint(foreign)
    flipped = bytearray(path.read_bytes())
    flipped[-5] ^= 0xFF
    bad = tmp_path / "flipped.safetensors"
    bad.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match="hash mismatch"):
        load_checkpoint(bad)
    load_checkpoint(bad, verify=False)  # loads when explicitly asked not to verify


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "nope.safetensors")
