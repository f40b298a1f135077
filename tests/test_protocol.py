"""Every registered architecture fills the same protocol; tested without per-architecture code."""

import torch

from lpa_cli.models import count_parameters
from tests.conftest import tiny_model


def test_one_pass_predictions_equal_manual_loop(arch):
    model, x, _ = tiny_model(arch, zero_init=False)
    model.eval()
    with torch.no_grad():
        fast = model.predictions(x)
        h = model.embed(x)
        manual = [model.head(h)]
        for block in model.blocks:
            h = block(h)
            manual.append(model.head(h))
    assert len(fast) == model.num_blocks + 1
    for a, b in zip(fast, manual):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # depth N is the ordinary output
    torch.testing.assert_close(fast[-1], model(x), rtol=0, atol=0)


def test_subset_of_depths_matches_full_pass(arch):
    model, x, _ = tiny_model(arch, zero_init=False)
    model.eval()
    with torch.no_grad():
        full = model.predictions(x)
        some = model.predictions(x, [2, 0])
    torch.testing.assert_close(some[0], full[2])
    torch.testing.assert_close(some[1], full[0])


def test_zero_init_makes_every_block_the_identity(arch):
    model, x, _ = tiny_model(arch, zero_init=True)
    model.eval()
    with torch.no_grad():
        states = list(model.states(x))
    for h in states[1:]:
        torch.testing.assert_close(h, states[0], rtol=0, atol=0)
    # ... and without it, blocks do change the stream
    model, x, _ = tiny_model(arch, zero_init=False)
    with torch.no_grad():
        states = list(model.eval().states(x))
    assert not torch.equal(states[1], states[0])


def test_truncated_model_gives_depth_k_predictions(arch):
    model, x, _ = tiny_model(arch, zero_init=False)
    model.eval()
    with torch.no_grad():
        full = model.predictions(x)
        for k in range(model.num_depths):
            torch.testing.assert_close(model.truncated(k)(x), full[k], rtol=0, atol=0)
    assert count_parameters(model.truncated(0)) < count_parameters(model)
