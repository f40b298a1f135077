"""A checkpoint never runs code: a model factory a file names is imported only when the user names it
(`--model`) or allows it (`--trust-factory`, LPA_TRUST_FACTORY=1) — for every command that opens a
checkpoint (docs/security.md)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from lpa_cli.formats.checkpoint import read_header, save_file
from tests.cli_helpers import assert_clean_error, run, run_json, subprocess_lpa

# A user's model file that also leaves a mark when imported: the mark shows that its code ran.
PLUGIN = '''
import pathlib
pathlib.Path("IMPORTED").touch()
from torch import nn
from lpa_cli import ResidualModel

class Block(nn.Module):
    def __init__(self, w):
        super().__init__()
        self.f = nn.Sequential(nn.Linear(w, w), nn.Tanh(), nn.Linear(w, w))
    def forward(self, h):
        return h + self.f(h)
    def branch_outputs(self):
        return [self.f[-1]]

def build(width=8, depth=2):
    return ResidualModel(nn.Linear(4, width), [Block(width) for _ in range(depth)], nn.Linear(width, 2))
'''


def _with_config(src, dst, **model):
    """A copy of checkpoint ``src`` whose config's model section is changed: what anyone can do to a
    downloaded file without touching its tensors (recomputing the metadata hash, which is no signature)."""
    from lpa_cli.formats.hashes import metadata_hash
    from safetensors.torch import load_file

    header, _ = read_header(src)
    meta = dict(header["__metadata__"])
    config = json.loads(meta["config"])
    config["model"] |= model
    meta["config"] = json.dumps(config)
    meta["meta_sha256"] = metadata_hash(meta)
    save_file(load_file(str(src)), dst, metadata=meta)
    return dst


@pytest.fixture()
def user_dir(tmp_path, monkeypatch):
    """A working directory holding plugin.py, a data file, a factory checkpoint and a crafted one."""
    import torch

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # what load_factory adds is undone after the test
    sys.modules.pop("plugin", None)
    monkeypatch.delenv("LPA_TRUST_FACTORY", raising=False)
    (tmp_path / "plugin.py").write_text(PLUGIN)
    (tmp_path / "pyproject.toml").write_text("[tool.lpa.audit]\nmonotone = true\n")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 4)).astype("float32")
    np.savez(tmp_path / "d.npz", x=x, y=(x[:, 0] > 0).astype("int64"))
    sys.path.insert(0, str(tmp_path))
    from plugin import build  # the test itself builds the model once, as its author would

    sys.path.remove(str(tmp_path))
    del sys.modules["plugin"]
    (tmp_path / "IMPORTED").unlink()
    torch.manual_seed(0)
    from lpa_cli import save_model

    save_model(tmp_path / "mine.safetensors", build(), kind="classification", in_shape=(4,), out_dim=2,
               data=f"file:{tmp_path / 'd.npz'}", factory="plugin:build", options={"width": 8, "depth": 2})
    _with_config(tmp_path / "mine.safetensors", tmp_path / "evil.safetensors", factory="os:system",
                 options={"command": f"touch {tmp_path / 'SYSTEM'}"})
    yield tmp_path
    sys.modules.pop("plugin", None)  # a test that allowed it imported it


def _no_code_ran(d):
    assert not (d / "IMPORTED").exists(), "the factory module was imported"
    assert not (d / "SYSTEM").exists(), "os.system ran"
    assert "plugin" not in sys.modules


COMMANDS = {
    "trace": lambda c, d: ["trace", c, "-o", d / "t.h5"],
    "export": lambda c, d: ["export", c, "--at", "1", "-o", d / "e.safetensors"],
    "monotonicity": lambda c, d: ["monotonicity", c],
    "compare": lambda c, d: ["compare", "--run", f"A={c}", "--run", f"B={c}", "-o", d / "r.html", "--no-measure"],
    "audit": lambda c, d: ["audit", c],
    "predict": lambda c, d: ["predict", c, "--exit", "depth:1"],
    "generate": lambda c, d: ["generate", c, "--prompt", "hello"],
    "train --init": lambda c, d: ["train", "--init", c, "--data", d / "d.npz", "--steps", "2", "-o", d / "ft.safetensors"],
}


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("crafted", ["evil", "mine"])
def test_no_command_imports_a_factory_a_file_names(user_dir, command, crafted):
    ckpt = user_dir / f"{crafted}.safetensors"
    recorded = "os:system" if crafted == "evil" else "plugin:build"
    assert_clean_error(run(*COMMANDS[command](ckpt, user_dir)), recorded, "--trust-factory")
    _no_code_ran(user_dir)
    assert not any((user_dir / n).exists() for n in ("t.h5", "e.safetensors", "r.html", "ft.safetensors"))


@pytest.mark.parametrize("command", ["trace", "export", "monotonicity", "compare", "audit", "predict", "train --init"])
def test_the_factory_the_user_names_rebuilds_their_model(user_dir, command):
    args = COMMANDS[command](user_dir / "mine.safetensors", user_dir)
    if command == "train --init":
        args += ["--model", "plugin:build"]
    result = run(*args, "--model", "plugin:build", "--exit-zero") if command in ("monotonicity", "audit") else (
        run(*args) if command == "train --init" else run(*args, "--model", "plugin:build"))
    assert result.exit_code == 0, result.output
    assert (user_dir / "IMPORTED").exists()


def test_trust_factory_flag_and_environment_allow_the_recorded_factory(user_dir):
    assert run("trace", user_dir / "mine.safetensors", "-o", user_dir / "a.h5", "--trust-factory").exit_code == 0
    assert run("trace", user_dir / "mine.safetensors", "-o", user_dir / "b.h5", env={"LPA_TRUST_FACTORY": "1"}).exit_code == 0
    assert (user_dir / "IMPORTED").exists()


def test_a_factory_other_than_the_recorded_one_is_refused_naming_both(user_dir):
    assert_clean_error(run("trace", user_dir / "evil.safetensors", "--model", "plugin:build"), "--model plugin:build", "'os:system'")
    _no_code_ran(user_dir)
    assert_clean_error(run("predict", user_dir / "mine.safetensors", "--exit", "depth:1", "--model", "os:system"),
                       "--model os:system", "'plugin:build'")
    _no_code_ran(user_dir)


def test_a_registered_architecture_refuses_a_named_factory(user_dir):
    run_json("train", "--data", user_dir / "d.npz", "--steps", "2", "--depth", "2", "--width", "8", "-o", user_dir / "m.safetensors")
    assert_clean_error(run("trace", user_dir / "m.safetensors", "--model", "plugin:build"), "names no factory")
    _no_code_ran(user_dir)


def test_info_never_imports_a_factory(user_dir):
    for crafted in ("evil", "mine"):
        for verify in ("--verify", "--no-verify"):
            d = run_json("info", user_dir / f"{crafted}.safetensors", verify)
            assert d["model"]["factory_imported"] is False
        text = run("info", user_dir / f"{crafted}.safetensors", env={"COLUMNS": "250"})
        assert text.exit_code == 0 and "(not imported)" in text.stdout
    _no_code_ran(user_dir)


def test_probe_reads_traces_only(user_dir):
    assert_clean_error(run("probe", user_dir / "evil.safetensors", "--fit-on", user_dir / "evil.safetensors"))
    _no_code_ran(user_dir)


def test_config_files_and_set_name_no_code(user_dir):
    (user_dir / "run.toml").write_text('[model]\narch = "custom"\nwidth = 0\nfactory = "plugin:build"\n')
    args = ["train", "--data", user_dir / "d.npz", "--steps", "2", "-o", user_dir / "c.safetensors"]
    assert_clean_error(run(*args, "--config", user_dir / "run.toml"), "run.toml", "'plugin:build'", "--trust-factory")
    assert_clean_error(run(*args, "--set", "model.arch=custom", "--set", "model.width=0", "--set", "model.factory=os:system"),
                       "'os:system'")
    assert_clean_error(run(*args, "--model", "plugin:build", "--set", "model.factory=os:system"), "--model plugin:build", "'os:system'")
    _no_code_ran(user_dir)
    assert run(*args, "--config", user_dir / "run.toml", "--trust-factory").exit_code == 0
    assert (user_dir / "IMPORTED").exists()


def test_resume_reads_no_code_from_a_snapshot(user_dir):
    """A crafted snapshot beside the output: its config must equal the command line's, so it names nothing."""
    from lpa_cli.training.snapshot import snapshot_path

    out = user_dir / "r.safetensors"
    header, _ = read_header(user_dir / "evil.safetensors")
    config = json.loads(header["__metadata__"]["config"])
    import torch

    save_file({"rng.torch": torch.get_rng_state()}, snapshot_path(out), metadata={
        "format": "lpa-snapshot", "config": json.dumps(config), "step": "1", "param_groups": "[]", "optim_scalars": "{}", "scaler": "{}"})
    assert_clean_error(run("train", "--data", user_dir / "d.npz", "--steps", "2", "--resume", "-o", out), "different settings")
    _no_code_ran(user_dir)


def test_reproduce_reuse_reads_metadata_only(user_dir):
    """`lpa reproduce` reuses checkpoints it finds by their config alone; a crafted one is never built."""
    from lpa_cli.config import RunConfig
    from lpa_cli.workflows.reproduce import CheckpointStore, _checkpoint

    store = CheckpointStore(user_dir)
    cfg = RunConfig.from_dict({"model": {"depth": 2, "width": 8}, "task": {"name": f"file:{user_dir / 'd.npz'}"},
                               "train": {"steps": 2, "threads": 1}})
    assert store.find(cfg) is None  # the index read every checkpoint's metadata, and built none
    path = _checkpoint(cfg, user_dir / "evil.safetensors", store, lambda message: None)  # retrained over the crafted file
    _no_code_ran(user_dir)
    assert run_json("info", path)["architecture"] == "mlp"


def test_a_module_in_the_working_directory_is_not_imported_by_the_real_executables(user_dir):
    """Run as users do (`lpa`, `python -m lpa_cli`) from the folder that holds plugin.py."""
    for module in (False, True):
        r = subprocess_lpa("trace", "mine.safetensors", "-o", "x.h5", cwd=user_dir, module=module)
        assert r.returncode == 2 and "plugin:build" in r.stderr and "Traceback" not in r.stderr, r.stderr
        _no_code_ran(user_dir)
    r = subprocess_lpa("trace", "mine.safetensors", "-o", "x.h5", "--model", "plugin:build", cwd=user_dir, module=True)
    assert r.returncode == 0, r.stderr
    assert (user_dir / "IMPORTED").exists()


def test_python_api_refuses_unless_named_or_trusted(user_dir):
    from lpa_core.errors import TrustError
    from lpa_cli import load_checkpoint

    with pytest.raises(TrustError, match="os:system"):
        load_checkpoint(user_dir / "evil.safetensors")
    _no_code_ran(user_dir)
    ckpt = load_checkpoint(user_dir / "mine.safetensors", factory="plugin:build")
    assert ckpt.model.num_blocks == 2
    assert load_checkpoint(user_dir / "mine.safetensors", trust_factory=True).sha256 == ckpt.sha256


def test_hf_auto_map_is_never_imported(tmp_path, monkeypatch):
    """A Hugging Face directory whose config points at code in the directory (auto_map)."""
    monkeypatch.chdir(tmp_path)
    d = tmp_path / "remote"
    d.mkdir()
    (d / "modeling_evil.py").write_text(f"import pathlib\npathlib.Path({str(tmp_path / 'IMPORTED')!r}).touch()\n")
    (d / "config.json").write_text(json.dumps({"model_type": "evil", "auto_map": {"AutoModelForCausalLM": "modeling_evil.EvilModel"},
                                               "architectures": ["EvilModel"], "trust_remote_code": True}))
    for args in (["trace", d], ["train", "--init", d, "--steps", "1", "-o", tmp_path / "x.safetensors"]):
        assert_clean_error(run(*args))
        assert not (tmp_path / "IMPORTED").exists()
