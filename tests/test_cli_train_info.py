import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.cli_helpers import TINY_TRAIN, assert_clean_error, run, run_json, subprocess_lpa


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "lpa.safetensors"
    data = run_json("train", *TINY_TRAIN, "-o", out)
    return out, data


def test_train_json_reports_per_depth_metrics_and_writes_checkpoint(trained):
    out, data = trained
    assert out.exists()
    assert data["output"] == str(out)
    assert set(data["metrics"]) == {"mse", "rmse", "r2"}
    assert len(data["metrics"]["mse"]) == 4  # depths 0..3
    assert data["config"]["objective"]["name"] == "lpa"
    assert len(data["sha256"]) == 64


def test_train_table_output(tmp_path):
    result = run("train", *TINY_TRAIN, "-o", tmp_path / "m.safetensors")
    assert result.exit_code == 0, result.output
    assert "per-depth test metrics" in result.stdout
    for column in ("depth", "mse", "r2"):
        assert column in result.stdout
    assert "saved" in result.stdout


def test_info_describes_the_checkpoint(trained):
    out, data = trained
    info = run_json("info", out, "--verify")
    assert info["architecture"] == "mlp" and info["depth"] == 3 and info["width"] == 16
    assert info["task"]["name"] == "surface:stripe"
    assert info["objective"]["name"] == "lpa"
    assert info["train"]["steps"] == 20
    assert info["metrics"] == data["metrics"]
    assert info["parameters"] > 0 and info["verified"] is True
    assert info["sha256_content"] == data["sha256"]
    text = run("info", out)
    assert text.exit_code == 0 and "architecture" in text.stdout and "parameters" in text.stdout


def test_info_side_by_side(trained, tmp_path):
    out, _ = trained
    e2e = tmp_path / "e2e.safetensors"
    run_json("train", *TINY_TRAIN, "--objective", "e2e", "-o", e2e)
    result = run("info", out, e2e)
    assert result.exit_code == 0 and "side by side" in result.stdout


def test_refuses_to_overwrite_without_force(trained):
    out, _ = trained
    before = out.read_bytes()
    result = run("train", *TINY_TRAIN, "-o", out)
    assert_clean_error(result, "already exists", "--force")
    assert out.read_bytes() == before


def test_same_command_twice_gives_byte_identical_checkpoints(tmp_path):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    run_json("train", *TINY_TRAIN, "--seed", "3", "-o", a)
    run_json("train", *TINY_TRAIN, "--seed", "3", "-o", b)
    assert a.read_bytes() == b.read_bytes()


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--objective", "bogus"], "unknown objective"),
        (["--arch", "nope"], "unknown architecture"),
        (["--task", "nope:x"], "unknown task"),
        (["--task", "surface:nope"], "unknown surface"),
        (["--depth", "0"], "--depth"),
        (["--weights", "cubic"], "depth weighting"),
        (["--depths", "1:2:0"], "step cannot be zero"),
        (["--lr", "-1"], "--lr"),
        (["--device", "tpu"], "device"),
        (["--set", "model.bogus=1"], "unknown key"),
        (["--set", "nonsense"], "bad --set"),
        (["--lpa-lambda", "-0.5"], "--lpa-lambda"),
        (["--loss-power", "1.5"], "--loss-power"),
        (["--sample-fraction", "0"], "--sample-fraction"),
    ],
)
def test_bad_flag_values_exit_2_with_one_line(tmp_path, args, needle):
    out = tmp_path / "x.safetensors"
    result = run("train", *TINY_TRAIN, *args, "-o", out)
    assert_clean_error(result, needle)
    assert not out.exists()


def test_toml_config_and_flag_override(tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text(
        '[model]\narch = "mlp"\ndepth = 2\nwidth = 8\n[objective]\nname = "e2e"\n'
        '[task]\nn_train = 128\nn_test = 16\n[train]\nsteps = 5\nthreads = 1\nbatch_size = 32\n'
    )
    data = run_json("train", "--config", cfg, "-o", tmp_path / "a.safetensors")
    assert data["config"]["model"]["depth"] == 2 and data["config"]["objective"]["name"] == "e2e"
    data = run_json("train", "--config", cfg, "--depth", "3", "--objective", "lpa", "-o", tmp_path / "b.safetensors")
    assert data["config"]["model"]["depth"] == 3 and data["config"]["objective"]["name"] == "lpa"
    assert data["config"]["model"]["width"] == 8  # untouched TOML values stay


@pytest.mark.parametrize(
    "text,needle",
    [
        ("[model\ndepth = 2", "invalid TOML"),
        ("[model]\ndepth = 'two'", "expected an integer"),
        ("[model]\ncolour = 3", "unknown key"),
        ("[modle]\ndepth = 3", "unknown config section"),
        ("model = 3", "must be a table"),
    ],
)
def test_bad_toml_exits_2(tmp_path, text, needle):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    assert_clean_error(run("train", "--config", cfg, "-o", tmp_path / "x.safetensors"), needle)
    assert_clean_error(run("train", "--config", tmp_path / "missing.toml"), "not found")


def test_info_on_bad_files_exits_2(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x80\x04garbage that would be a pickle")
    assert_clean_error(run("info", bad), str(bad), "pickle")
    assert_clean_error(run("info", tmp_path / "missing.safetensors"), "no such file")


def test_every_command_has_complete_help():
    top = run("--help")
    assert top.exit_code == 0
    for command in ("train", "info", "trace", "monotonicity", "probe", "compare", "export", "audit"):
        assert command in top.stdout
        result = run(command, "--help")
        assert result.exit_code == 0 and "Usage" in result.stdout


def test_python_dash_m_and_installed_entry_point(tmp_path, trained):
    # Four processes at once: each spends seconds importing torch, which two cores overlap.
    out = tmp_path / "sub.safetensors"
    calls = {"help": (("--help",), True), "train": (("train", *TINY_TRAIN, "-o", out, "--json"), False),
             "info": (("info", trained[0], "--json"), False),
             "bad": (("train", *TINY_TRAIN, "--objective", "nope", "-o", tmp_path / "n.safetensors"), False)}
    with ThreadPoolExecutor(len(calls)) as pool:
        futures = {name: pool.submit(subprocess_lpa, *args, module=module) for name, (args, module) in calls.items()}
        proc = {name: future.result() for name, future in futures.items()}
    assert proc["help"].returncode == 0 and "train" in proc["help"].stdout
    assert proc["train"].returncode == 0, proc["train"].stderr
    assert json.loads(proc["train"].stdout)["output"] == str(out) and out.exists()
    assert proc["info"].returncode == 0 and json.loads(proc["info"].stdout)["architecture"] == "mlp"
    bad = proc["bad"]
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and bad.stderr.startswith("error:")
