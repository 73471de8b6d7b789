"""Weight-only int8 and int4 quantization (generation/quantize.py): the arithmetic by hand,
each quantized layer within the bound its scales allow, and a quantized model that decodes
the tokens of a float model holding the same (dequantized) weights."""

import copy

import pytest
import torch
from torch import nn

from llmscratch.errors import LLMScratchError
from llmscratch.generation.engine import Engine
from llmscratch.generation.quantize import (
    DEQUANTIZE_ROWS,
    Int4Linear,
    Int8Linear,
    check_mode,
    dequantize_int4,
    dequantize_int8,
    quantize_int4,
    quantize_int8,
    quantize_linear_weights,
)
from llmscratch.model.heads import linear_cross_entropy
from tests.test_engine import GREEDY, prompts, uncached_greedy
from tests.test_families import tiny


def test_int8_per_row_scales_and_levels_by_hand():
    w = torch.tensor([[0.5, -1.27, 0.02],   # max |w| 1.27: scale 0.01
                      [2.54, 1.0, -0.3],    # max |w| 2.54: scale 0.02
                      [0.0, 0.0, 0.0]])     # all zero: levels 0, whatever the scale
    q, scale = quantize_int8(w)
    assert q.dtype == torch.int8
    assert torch.allclose(scale[:2], torch.tensor([0.01, 0.02]))
    assert q.tolist() == [[50, -127, 2], [127, 50, -15], [0, 0, 0]]
    assert torch.allclose(dequantize_int8(q, scale), w, atol=1e-6)  # these land on levels


def test_int4_group_scales_minimums_and_levels_by_hand():
    w = torch.tensor([[0.0, 1.42, 3.0, 0.2, -1.0, -1.0, -1.0, -1.0]])  # two groups of 4
    q, scale, low = quantize_int4(w, group_size=4)
    # Group 1: min 0, max 3, scale 3 / 15 = 0.2; levels 0, round(7.1) = 7, 15, round(1) = 1.
    # Group 2: one value: its minimum, level 0.
    assert torch.allclose(scale[0, 0], torch.tensor(0.2)) and low.tolist() == [[0.0, -1.0]]
    assert q.tolist() == [[0, 7, 15, 1, 0, 0, 0, 0]]
    expected = torch.tensor([[0.0, 1.4, 3.0, 0.2, -1.0, -1.0, -1.0, -1.0]])  # 1.42 -> 7 x 0.2
    assert torch.allclose(dequantize_int4(q, scale, low), expected, atol=1e-6)


def random_linear(out_features: int, in_features: int, bias: bool = True) -> nn.Linear:
    torch.manual_seed(0)
    linear = nn.Linear(in_features, out_features, bias=bias)
    with torch.no_grad():
        linear.weight[3, 5] = 1.5  # an outlier: its row's (int8) or group's (int4) scale grows
    return linear


def bf16_slack(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """What the kernels' bf16 arithmetic adds to an output's error, at most: bf16 keeps 8
    significant bits, so each rounding (the input, the scale or zero, the sum) moves a value
    by at most 2^-9 of itself; four of them, over sum_k |x_k| |W[n, k]|."""
    return 2.0**-7 * (x.abs() @ weight.abs().T)


def test_int8_linear_is_within_half_a_step_per_weight_of_the_float_layer():
    """Rounding moves each weight by at most scale / 2, so output n moves by at most
    (scale[n] / 2) * sum |x|, plus bf16's rounding; the kernel computes x @ dequantized.T."""
    linear = random_linear(40, 64)
    x = torch.randn(2, 5, 64)
    layer = Int8Linear(linear)
    with torch.no_grad():
        y, exact = layer(x), linear(x)
    assert y.shape == (2, 5, 40) and y.dtype == torch.float32
    _, scale = quantize_int8(linear.weight)
    slack = bf16_slack(x, linear.weight)
    bound = 0.5 * x.abs().sum(-1, keepdim=True) * scale  # (2, 5, 40)
    assert ((y - exact).abs() <= bound + slack).all()
    assert (y - exact).abs().max() > 1e-3  # it did quantize
    dequantized = x @ layer.dequantized().T + linear.bias
    assert ((y - dequantized).abs() <= slack).all()
    many = torch.randn(40, 64)  # a prompt's rows: an fp32 matmul by the dequantized weight
    with torch.no_grad():
        assert torch.allclose(layer(many), many @ layer.dequantized().T + linear.bias,
                              atol=1e-5)


@pytest.mark.parametrize("out_features", [48, 40])  # 40: not a multiple of 16, rows added
def test_int4_linear_is_within_half_a_step_per_weight_of_the_float_layer(out_features):
    linear = random_linear(out_features, 128)
    x = torch.randn(7, 128)
    layer = Int4Linear(linear, group_size=32)
    with torch.no_grad():
        y, exact = layer(x), linear(x)
    q, scale, low = quantize_int4(linear.weight, 32)  # (N, K), (N, 4), (N, 4)
    # Output n moves by at most sum over groups g of (scale[n, g] / 2) * sum_{k in g} |x_k|.
    bound = 0.5 * x.abs().reshape(7, 4, 32).sum(-1) @ scale.T  # (7, N)
    slack = bf16_slack(x, linear.weight)
    assert ((y - exact).abs() <= bound + slack).all()
    assert (y - exact).abs().max() > 1e-2
    dequantized = dequantize_int4(q, scale, low)
    assert ((y - x @ dequantized.T - linear.bias).abs() <= slack).all()
    # what the kernel multiplies by: the levels, and bf16's rounding of scale, zero and sum
    assert ((layer.dequantized() - dequantized).abs()
            <= 2.0**-7 * (dequantized.abs() + (low.abs() + 8 * scale).repeat_interleave(32, 1))
            ).all()


class Bf16Linear(nn.Linear):
    """A float linear layer that rounds as the kernels do: its input and its output to bf16
    (the sum in fp32); as an ordinary fp32 layer for `plain_rows` rows or more."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, plain_rows: int):
        super().__init__(weight.shape[1], weight.shape[0], bias=bias is not None)
        self.weight, self.bias = nn.Parameter(weight), None if bias is None else nn.Parameter(bias)
        self.plain_rows = plain_rows

    def forward(self, x):
        if x.reshape(-1, x.shape[-1]).shape[0] >= self.plain_rows:
            return super().forward(x)
        y = (x.bfloat16().float() @ self.weight.float().T).bfloat16().to(x.dtype)
        return y if self.bias is None else y + self.bias


def dequantized_twin(model: nn.Module, quantized_model: nn.Module) -> nn.Module:
    """A float copy of `model` whose linear layers hold what `quantized_model`'s multiply by,
    with the same roundings."""
    twin = copy.deepcopy(model)
    for name, module in quantized_model.named_modules():
        if isinstance(module, (Int8Linear, Int4Linear)):
            parent, _, child = name.rpartition(".")
            plain = DEQUANTIZE_ROWS if isinstance(module, Int8Linear) else 10**9
            layer = Bf16Linear(module.dequantized(), module.bias, plain)
            setattr(twin.get_submodule(parent) if parent else twin, child, layer)
    return twin


@pytest.mark.parametrize("mode", ["int8", "int4"])
@pytest.mark.parametrize("name", ["gpt2-tiny", "llama-3-tiny", "qwen3-tiny", "qwen3-moe-tiny"])
def test_a_quantized_model_decodes_the_greedy_tokens_of_its_dequantized_twin(name, mode):
    model = tiny(name)
    quantized = copy.deepcopy(model)
    linears = sum(type(m) is nn.Linear and not n.endswith("router")
                  for n, m in model.named_modules())
    assert quantize_linear_weights(quantized, mode) == linears
    assert not any(type(m) is nn.Linear and not n.endswith("router")
                   for n, m in quantized.named_modules())
    if mode == "int4":  # the blocks in int4 where the width allows, the output layer in int8
        assert isinstance(quantized.lm_head, Int8Linear)
        assert any(isinstance(m, Int4Linear) for m in quantized.modules())
    if name == "qwen3-tiny":  # a tied output layer: the embedding itself stays float
        assert quantized.tok_emb.weight.dtype == torch.float32
    twin = dequantized_twin(model, quantized)
    batch = prompts([3, 17, 9])
    expected = [uncached_greedy(twin, p, 16) for p in batch]
    assert [uncached_greedy(quantized, p, 16) for p in batch] == expected
    assert Engine(quantized, block_size=4).generate(batch, GREEDY) == expected


def test_the_loss_reads_a_quantized_output_layer_through_the_layer():
    """`next_token_loss` reads the output layer's weight; a quantized one has none to read, so
    the loss goes through the layer: the same sum as with its dequantized weight."""
    model = tiny("gpt2-tiny")
    quantize_linear_weights(model, "int8")
    hidden = torch.randn(2, 9, 32)
    targets = torch.randint(0, 512, (2, 9))
    targets[0, :3] = -100  # not predicted
    loss, count = model.next_token_loss(hidden, targets)
    weight = model.lm_head.dequantized()
    assert count == 15
    assert loss.item() == pytest.approx(
        linear_cross_entropy(hidden.flatten(0, 1), weight, targets.flatten()).item(), rel=1e-3)


def test_bf16_weights_quantize_and_compute_in_bf16():
    model = tiny("llama-3-tiny").to(torch.bfloat16)
    twin = copy.deepcopy(model)
    quantize_linear_weights(model, "int4")
    twin = dequantized_twin(twin, model).to(torch.bfloat16)
    ids = torch.tensor(prompts([12]))
    with torch.no_grad():
        got, expected = model.logits(model(ids)).float(), twin.logits(twin(ids)).float()
    assert got.dtype == torch.float32 and model.lm_head.scale.dtype == torch.bfloat16
    assert (got - expected).abs().max() < 3e-2 * expected.abs().max()


def test_an_unknown_mode_or_a_device_without_the_kernels_is_refused_in_one_line():
    with pytest.raises(LLMScratchError, match="unknown quantization 'int3'; choose int8 or int4"):
        check_mode("int3", "cpu")
    with pytest.raises(LLMScratchError, match="runs on the CPU only"):
        check_mode("int8", "cuda")
    check_mode(None, "cuda")  # nothing asked, nothing refused
    model = tiny("gpt2-tiny")
    assert quantize_linear_weights(model, None) == 0
    assert type(model.lm_head) is nn.Linear
