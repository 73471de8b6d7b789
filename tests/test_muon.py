"""Muon: the Newton-Schulz orthogonalization, the parameter split, and its AdamW half."""

import pytest
import torch

from llmscratch.model import GPT, get_preset
from llmscratch.runs.config import TrainConfig
from llmscratch.training.muon import Muon, orthogonalize
from llmscratch.training.optim import build_optimizer


@pytest.mark.parametrize("shape", [(64, 256), (256, 64), (96, 384)])
def test_orthogonalize_brings_every_singular_value_near_one(shape):
    torch.manual_seed(0)
    # A gradient-like matrix: a few strong directions on top of noise.
    update = torch.randn(*shape) + 20 * torch.randn(shape[0], 1) @ torch.randn(1, shape[1])
    before = torch.linalg.svdvals(update)
    assert before.max() / before.min() > 50  # badly conditioned to begin with
    ortho = orthogonalize(update)
    assert ortho.shape == update.shape
    after = torch.linalg.svdvals(ortho)
    assert after.min() > 0.6 and after.max() < 1.25
    # Same singular vectors: U^T O V is (nearly) diagonal.
    u, _, vh = torch.linalg.svd(update, full_matrices=False)
    core = u.T @ ortho @ vh.T
    off_diagonal = core - torch.diag(torch.diagonal(core))
    assert off_diagonal.abs().max() < 0.05


def test_muon_takes_the_block_matrices_and_adamw_the_rest():
    model = GPT(get_preset("gpt2-tiny"))
    opt = build_optimizer(model, TrainConfig(optimizer="muon", lr=1e-3, muon_lr=0.02))
    muon_groups = [g for g in opt.param_groups if g["muon"]]
    names = {id(p): n for n, p in model.named_parameters()}
    in_muon = {names[id(p)]: g["row_splits"] for g in muon_groups for p in g["params"]}
    expected = {n for n, p in model.named_parameters() if n.startswith("blocks.") and p.dim() == 2}
    assert set(in_muon) == expected
    width = model.config.n_embd
    assert in_muon["blocks.0.attn.qkv.weight"] == [width, width, width]  # q, k, v apart
    assert in_muon["blocks.0.mlp.fc.weight"] == []  # one matrix
    assert all(g["initial_lr"] == 0.02 for g in muon_groups)
    others = [g for g in opt.param_groups if not g["muon"]]
    assert all(g["initial_lr"] == 1e-3 for g in others)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))


def test_adamw_groups_match_torch_adamw():
    torch.manual_seed(0)
    ours_params = [torch.nn.Parameter(torch.randn(8, 4)), torch.nn.Parameter(torch.randn(4))]
    ref_params = [torch.nn.Parameter(p.detach().clone()) for p in ours_params]
    ours = Muon([{"params": ours_params, "weight_decay": 0.1}], lr=1e-2, betas=(0.9, 0.95))
    ref = torch.optim.AdamW(ref_params, lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    for _ in range(5):
        grads = [torch.randn_like(p) for p in ours_params]
        for p, q, g in zip(ours_params, ref_params, grads, strict=True):
            p.grad, q.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
    for p, q in zip(ours_params, ref_params, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_muon_refuses_vectors():
    with pytest.raises(ValueError, match="2-D"):
        Muon([{"params": [torch.nn.Parameter(torch.zeros(3))], "muon": True}])


def test_muon_weight_decay_shrinks_the_matrices_by_lr_times_decay():
    torch.manual_seed(0)
    start = torch.randn(6, 4)
    steps = {}
    for decay in (0.0, 0.5):
        weight = torch.nn.Parameter(start.clone())
        opt = Muon([{"params": [weight], "muon": True, "weight_decay": decay}], lr=0.1)
        weight.grad = torch.randn(6, 4, generator=torch.Generator().manual_seed(1))
        opt.step()
        steps[decay] = weight.detach()
    # Same update; with decay the old weights were first scaled by 1 - 0.1 x 0.5.
    torch.testing.assert_close(steps[0.5], steps[0.0] - 0.05 * start)
    model = GPT(get_preset("gpt2-tiny"))
    opt = build_optimizer(model, TrainConfig(optimizer="muon", muon_weight_decay=0.3))
    assert all(g["weight_decay"] == 0.3 for g in opt.param_groups if g["muon"])


def test_stacked_matrices_are_orthogonalized_piece_by_piece():
    torch.manual_seed(0)
    start, grad = torch.randn(12, 8), torch.randn(12, 8)
    weight = torch.nn.Parameter(start.clone())
    opt = Muon([{"params": [weight], "muon": True, "row_splits": [8, 2, 2]}], lr=0.1,
               momentum=0.0)
    weight.grad = grad.clone()
    opt.step()
    # 8 x 8 is square (scale 1); 2 x 8 is wide (scale 1).
    expected = start - 0.1 * torch.cat([orthogonalize(g) for g in grad.split([8, 2, 2])])
    torch.testing.assert_close(weight.detach(), expected)


def test_a_batch_of_matrices_is_orthogonalized_matrix_by_matrix():
    torch.manual_seed(0)
    batch = torch.randn(3, 16, 40)
    one_by_one = torch.stack([orthogonalize(m) for m in batch])
    torch.testing.assert_close(orthogonalize(batch), one_by_one, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(orthogonalize(batch.mT), one_by_one.mT, rtol=1e-5, atol=1e-6)


def test_matrices_batched_by_shape_take_the_steps_they_take_alone():
    """Muon groups same-shape matrices (a tall one as its transpose) into one batch."""
    torch.manual_seed(0)
    shapes = [(8, 24), (24, 8), (8, 24), (5, 5)]
    starts = [torch.randn(*s) for s in shapes]
    grads = [torch.randn(*s) for s in shapes]
    together = [torch.nn.Parameter(s.clone()) for s in starts]
    opt = Muon([{"params": together, "muon": True}], lr=0.1, momentum=0.0)
    for p, g in zip(together, grads, strict=True):
        p.grad = g.clone()
    opt.step()
    for start, grad, p in zip(starts, grads, together, strict=True):
        alone = torch.nn.Parameter(start.clone())
        alone.grad = grad.clone()
        Muon([{"params": [alone], "muon": True}], lr=0.1, momentum=0.0).step()
        torch.testing.assert_close(p.detach(), alone.detach(), rtol=1e-5, atol=1e-6)
