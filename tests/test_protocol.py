"""Every registered architecture fills the same protocol; tested without per-architecture code."""

import torch

from lpa_cli.models import count_parameters
from tests.conftest import tiny_model


def _call(module, h, mask):
    return module(h) if mask is None else module(h, attention_mask=mask)


def test_one_pass_predictions_equal_manual_loop(arch):
    model, batch, _ = tiny_model(arch, zero_init=False)
    x, mask = batch.x, batch.mask
    model.eval()
    with torch.no_grad():
        fast = model.predictions(x, attention_mask=mask)
        h = model.embed(x)
        manual = [_call(model.head, h, mask)]
        for block in model.blocks:
            h = _call(block, h, mask)
            manual.append(_call(model.head, h, mask))
    assert len(fast) == model.num_blocks + 1
    for a, b in zip(fast, manual):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # depth N is the ordinary output
    torch.testing.assert_close(fast[-1], model(x, mask), rtol=0, atol=0)


def test_subset_of_depths_matches_full_pass(arch):
    model, batch, _ = tiny_model(arch, zero_init=False)
    model.eval()
    with torch.no_grad():
        full = model.predictions(batch.x, attention_mask=batch.mask)
        some = model.predictions(batch.x, [2, 0], attention_mask=batch.mask)
    torch.testing.assert_close(some[0], full[2])
    torch.testing.assert_close(some[1], full[0])


def test_zero_init_makes_every_block_the_identity(arch):
    model, batch, _ = tiny_model(arch, zero_init=True)
    model.eval()
    with torch.no_grad():
        states = list(model.states(batch.x, attention_mask=batch.mask))
    for h in states[1:]:
        torch.testing.assert_close(h, states[0], rtol=0, atol=0)
    # ... and without it, blocks do change the stream
    model, batch, _ = tiny_model(arch, zero_init=False)
    with torch.no_grad():
        states = list(model.eval().states(batch.x, attention_mask=batch.mask))
    assert not torch.equal(states[1], states[0])


def test_truncated_model_gives_depth_k_predictions(arch):
    model, batch, _ = tiny_model(arch, zero_init=False)
    model.eval()
    with torch.no_grad():
        full = model.predictions(batch.x, attention_mask=batch.mask)
        for k in range(model.num_depths):
            torch.testing.assert_close(model.truncated(k)(batch.x, batch.mask), full[k], rtol=0, atol=0)
    assert count_parameters(model.truncated(0)) < count_parameters(model)
