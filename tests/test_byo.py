"""Bring your own model: LPA as a loss in your own loop, torchvision-style ResNets through their
adapter, your own model factory on the command line, experiment trackers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lpa_cli import LPALoss, ResidualModel
from lpa_cli.config import ObjectiveConfig
from lpa_cli.training.objectives import build_objective
from lpa_cli.models.torchvision_models import from_resnet
from tests.cli_helpers import TINY_TRAIN, assert_clean_error, run, run_json
from tests.conftest import tiny_model


# --- a module laid out like torchvision's ResNet (PyPI's torchvision does not import beside the CPU torch here)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class TorchvisionStyleResNet(nn.Module):
    def __init__(self, widths=(8, 16), blocks=(1, 1), classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = widths[0]
        for i, (w, n) in enumerate(zip(widths, blocks)):
            layers = [BasicBlock(inplanes, w, 1 if i == 0 else 2)] + [BasicBlock(w, w) for _ in range(n - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
            inplanes = w
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(1, 10):
            if hasattr(self, f"layer{i}"):
                x = getattr(self, f"layer{i}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def make_resnet(widths: list | None = None, blocks: list | None = None, classes: int = 10) -> ResidualModel:
    """A factory as a user writes one: `lpa train --model tests.test_byo:make_resnet`."""
    torch.manual_seed(0)
    return from_resnet(TorchvisionStyleResNet(tuple(widths or (8, 16)), tuple(blocks or (1, 1)), classes))


def not_a_model(**kwargs):
    return nn.Linear(2, 2)


def test_adapter_shares_weights_and_depth_n_is_the_original():
    net = TorchvisionStyleResNet(blocks=(2, 2)).eval()
    model = from_resnet(net)
    assert model.num_blocks == 4
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model.predictions(x)[-1], net(x), rtol=0, atol=0)
        net.fc.bias += 1  # the same modules, not copies
        torch.testing.assert_close(model(x), net(x), rtol=0, atol=0)


def test_adapter_refuses_what_it_does_not_recognise():
    net = TorchvisionStyleResNet()
    del net.maxpool
    with pytest.raises(Exception, match="'maxpool'"):
        from_resnet(net)
    net = TorchvisionStyleResNet()
    del net.layer1, net.layer2
    with pytest.raises(Exception, match="'layer1'"):
        from_resnet(net)


def test_the_loss_equals_the_trainers_objective(arch):
    """LPALoss(model, batch) and LPALoss(states, y, head=...) give the objective's value and gradients."""
    model, batch, kind = tiny_model(arch)
    settings = {"weights": "linear", "loss_power": 0.5, "sample_fraction": 0.6}
    reference = build_objective(ObjectiveConfig(name="lpa", **settings), model.num_blocks, kind)(model, batch)
    ref_grads = torch.autograd.grad(reference.loss, list(model.parameters()), allow_unused=True)
    out = LPALoss(kind, **settings)(model, batch)
    torch.testing.assert_close(out.loss, reference.loss)
    states = list(model.states(batch.x, attention_mask=batch.mask))
    own = LPALoss(kind, **settings)(states, batch.y, head=model.head, attention_mask=batch.mask, tokenwise_head=model.tokenwise_head)
    torch.testing.assert_close(own.loss, reference.loss)
    for a, b in zip(torch.autograd.grad(own.loss, list(model.parameters()), allow_unused=True), ref_grads):
        if b is not None:
            torch.testing.assert_close(a, b)


def _images(tmp_path, n: int = 600):
    """Digits as 3 x 16 x 16 images in an .npz (a user's own data file)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.repeat(np.kron(d.images[:n], np.ones((2, 2)))[:, None], 3, axis=1).astype(np.float32) / 16
    path = tmp_path / "digits16.npz"
    np.savez(path, x=x, y=d.target[:n].astype(np.int64))
    return path


def test_a_users_own_loop_as_in_the_docs(tmp_path):
    """The README's loop: a torchvision-style ResNet trained with LPALoss, saved, then traced and
    tested by the commands like any lpa checkpoint."""
    from lpa_cli import save_model
    from lpa_cli.data.tasks import load_task
    from lpa_cli.config import TaskConfig

    data = _images(tmp_path)
    task = load_task(TaskConfig(name=f"file:{data}"))
    x, y = task.train.tensors()
    model = make_resnet()
    loss_fn = LPALoss("classification")
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for step in range(150):
        idx = torch.randint(0, len(x), (64,), generator=gen)
        out = loss_fn(model, (x[idx], y[idx]))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    ckpt = tmp_path / "mine.safetensors"
    save_model(ckpt, model, kind="classification", in_shape=(3, 16, 16), out_dim=10, data=f"file:{data}",
               factory="tests.test_byo:make_resnet")
    trace = run_json("trace", ckpt, "-o", tmp_path / "mine.h5", "--model", "tests.test_byo:make_resnet")
    assert trace["metrics"]["acc"][-1] > 0.6
    result = run("monotonicity", tmp_path / "mine.h5", "--metric", "ce")
    assert result.exit_code == 0, result.output
    assert_clean_error(run("trace", ckpt, "--states", "-o", tmp_path / "s.h5", "--trust-factory"), "different shapes")


def test_model_factory_on_the_command_line(tmp_path):
    data = _images(tmp_path, 200)
    out = tmp_path / "f.safetensors"
    result = run_json("train", "--model", "tests.test_byo:make_resnet", "--set", "model.options.widths=[8, 8]", "--data", data,
                      "--steps", "5", "--batch-size", "32", "--threads", "1", "-o", out)
    assert result["config"]["model"]["factory"] == "tests.test_byo:make_resnet"
    assert result["config"]["model"]["options"] == {"widths": [8, 8]}
    info = run_json("info", out)
    assert info["model"]["factory"] == "tests.test_byo:make_resnet" and info["depth"] == 2
    assert info["model"]["factory_imported"] is False
    assert run("trace", out, "-o", tmp_path / "f.h5", "--quiet", "--model", "tests.test_byo:make_resnet").exit_code == 0
    for target, needle in (("no_such_module_xyz:make", "cannot import module"), ("tests.test_byo:nothing", "has no 'nothing'"),
                           ("tests.test_byo:not_a_model", "not a ResidualModel"), ("nocolon", "package.module:function")):
        assert_clean_error(run("train", "--model", target, "--data", data, "--steps", "1", "-o", tmp_path / "x.safetensors"), needle)
    assert not (tmp_path / "x.safetensors").exists()


def test_trackers_record_per_depth_scalars(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard", reason="the track extra is not installed (pip install 'lpa[track]')")
    pytest.importorskip("mlflow", reason="the track extra is not installed (pip install 'lpa[track]')")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the default: a local store beside the output
    out = tmp_path / "t.safetensors"
    run_json("train", *TINY_TRAIN, "--eval-every", "10", "--log", "jsonl", "--log", "tensorboard", "--log", "mlflow", "-o", out)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "t.tb"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"test/mse/depth_0", "test/mse/depth_3", "train/loss/depth_2"} <= set(tags)
    assert [e.step for e in events.Scalars("test/mse/depth_3")] == [10, 20]
    import mlflow

    mlflow.set_tracking_uri((tmp_path / "mlruns").as_uri())
    run_info = mlflow.search_runs(experiment_ids=["0"], output_format="list")[0]
    assert run_info.data.params["objective.name"] == "lpa"
    assert "test.mse.depth_3" in run_info.data.metrics
    artifacts = [a.path for a in mlflow.MlflowClient().list_artifacts(run_info.info.run_id)]
    assert "t.safetensors" in artifacts
    assert out.with_suffix(".jsonl").exists()
