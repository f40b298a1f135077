"""Built-in and user data: shapes, splits, and clear errors for bad files (exit 2, nothing written)."""

import h5py
import numpy as np
import pytest
import torch

from lpa_core.errors import DataError
from lpa_cli.config import TaskConfig
from lpa_cli.data.tasks import load_task
from lpa_cli.data.surfaces import SURFACES
from lpa_cli.data.text import builtin_corpus
from tests.cli_helpers import TINY_TRAIN, assert_clean_error, run, run_json


@pytest.mark.parametrize("name", sorted(SURFACES))
def test_surfaces_are_seeded_and_evaluate_their_formula(name):
    a = load_task(TaskConfig(name=f"surface:{name}", n_train=100, n_test=16))
    b = load_task(TaskConfig(name=f"surface:{name}", n_train=100, n_test=16))
    assert torch.equal(a.train.x, b.train.x) and a.test.x.shape == (16, 2) and a.meta["grid"] == [4, 4]
    fn = SURFACES[name][0]
    torch.testing.assert_close(a.test.y[:, 0], fn(a.test.x[:, 0], a.test.x[:, 1]))


def test_stripe_is_the_papers_function():
    task = load_task(TaskConfig(name="surface:stripe", n_train=10, n_test=4))
    x, y = task.train.x[:, 0], task.train.x[:, 1]
    torch.testing.assert_close(task.train.y[:, 0], torch.exp(-5 * (x**2 + y**2)) * torch.sin(10 * x))


def test_digits_split_is_fixed_and_disjoint():
    a, b = load_task(TaskConfig(name="digits")), load_task(TaskConfig(name="digits"))
    assert torch.equal(a.test.x, b.test.x) and a.train.x.shape == (1437, 1, 8, 8) and a.test.x.shape[0] == 360
    train_rows = {tuple(r.flatten().tolist()) for r in a.train.x}
    overlap = sum(tuple(r.flatten().tolist()) in train_rows for r in a.test.x)
    assert overlap < 5  # the raw set has a few duplicate images, nothing more
    c = load_task(TaskConfig(name="digits", data_seed=1))
    assert not torch.equal(a.test.x, c.test.x)


def test_shapes_and_text_tasks():
    shapes = load_task(TaskConfig(name="shapes", n_train=60, n_test=12))
    assert shapes.train.x.shape == (60, 1, 16, 16) and shapes.kind == "classification" and shapes.out_dim == 6
    assert len(torch.unique(shapes.train.y)) > 3
    text = load_task(TaskConfig(name="text", options={"context": 32}))
    x, y = text.train.tensors()
    assert text.kind == "lm" and x.shape[1] == 32
    assert torch.equal(x[0, 1:], y[0, :-1])  # targets are the next bytes
    assert len(builtin_corpus()) > 100_000


def test_text_file_task(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("the quick brown fox jumps over the lazy dog. " * 50)
    task = load_task(TaskConfig(name=f"text:{path}", options={"context": 16}))
    assert task.kind == "lm" and task.train.tensors()[0].max() < 256
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"caf\xe9 " * 200)
    with pytest.raises(DataError, match="not UTF-8"):
        load_task(TaskConfig(name=f"text:{bad}"))


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_user_npz_regression_and_classification(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 3)).astype(np.float32)
    reg = load_task(TaskConfig(name=f"file:{_npz(tmp_path / 'r.npz', x=x, y=x.sum(1))}"))
    assert reg.kind == "regression" and reg.out_dim == 1 and reg.test.x.shape == (20, 3)
    cls = load_task(TaskConfig(name=f"file:{_npz(tmp_path / 'c.npz', x=x, y=(x[:, 0] > 0).astype(np.int64))}"))
    assert cls.kind == "classification" and cls.out_dim == 2
    img = load_task(TaskConfig(name=f"file:{_npz(tmp_path / 'i.npz', x=rng.normal(size=(30, 8, 8)), y=np.arange(30) % 3)}"))
    assert img.input_kind == "image" and img.train.x.shape[1:] == (1, 8, 8)


def test_user_csv_and_h5(tmp_path):
    csv = tmp_path / "d.csv"
    csv.write_text("a,b,target\n" + "\n".join(f"{i},{i * 2},{i * 3.5}" for i in range(40)))
    task = load_task(TaskConfig(name=f"file:{csv}"))
    assert task.kind == "regression" and task.in_shape == (2,)
    task = load_task(TaskConfig(name=f"file:{csv}", options={"target_column": "a"}))
    assert task.in_shape == (2,)
    h5 = tmp_path / "d.h5"
    with h5py.File(h5, "w") as f:
        f["inputs"] = np.random.default_rng(0).normal(size=(50, 4))
        f["labels"] = np.arange(50) % 5
    task = load_task(TaskConfig(name=f"file:{h5}", options={"x_key": "inputs", "y_key": "labels"}))
    assert task.kind == "classification" and task.out_dim == 5


def _bad_files(tmp_path):
    x = np.zeros((20, 2), np.float32)
    yield _npz(tmp_path / "missing.npz", x=x), "missing array"
    yield _npz(tmp_path / "lengths.npz", x=x, y=np.zeros(19)), "rows"
    yield _npz(tmp_path / "nan.npz", x=x, y=np.array([np.nan] + [0.0] * 19)), "NaN"
    yield _npz(tmp_path / "object.npz", x=x, y=np.array([{"a": 1}] * 20, dtype=object)), "object arrays"
    yield _npz(tmp_path / "strings.npz", x=x, y=np.array(["a"] * 20)), "dtype"
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    yield tmp_path / "broken.npz", "not a valid .npz"
    (tmp_path / "text.csv").write_text("a,b\n1,x\n2,3\n")
    yield tmp_path / "text.csv", "non-numeric"
    (tmp_path / "ragged.csv").write_text("1,2,3\n4,5\n")
    yield tmp_path / "ragged.csv", "columns"
    with h5py.File(tmp_path / "nox.h5", "w") as f:
        f["y"] = np.zeros(3)
    yield tmp_path / "nox.h5", "missing dataset"
    (tmp_path / "fake.h5").write_bytes(b"\0" * 64)
    yield tmp_path / "fake.h5", "cannot read HDF5"
    yield tmp_path / "data.parquet", "unsupported"
    yield tmp_path / "absent.npz", "not found"


def test_bad_data_files_exit_2_and_write_nothing(tmp_path):
    out = tmp_path / "out.safetensors"
    for path, needle in _bad_files(tmp_path):
        with pytest.raises(DataError, match=needle):
            load_task(TaskConfig(name=f"file:{path}"))
        assert_clean_error(run("train", *TINY_TRAIN, "--data", path, "-o", out), needle)
        assert not out.exists()


def test_train_on_user_data_through_the_cli(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 4)).astype(np.float32)
    path = _npz(tmp_path / "mine.npz", inputs=x, labels=(x[:, 0] + x[:, 1] > 0).astype(np.int64))
    data = run_json("train", *TINY_TRAIN, "--data", path, "--x-key", "inputs", "--y-key", "labels", "-o", tmp_path / "m.safetensors")
    assert data["task"]["kind"] == "classification" and set(data["metrics"]) == {"ce", "acc", "err"}
