"""LoRA on every family (model/lora.py), and adapters interchanged with PEFT on tiny local
`transformers` models (runs/peft_adapters.py): logits agree in fp32 within 1e-4."""

import json

import pytest
import torch
from torch import nn

from llmscratch.errors import LLMScratchError
from llmscratch.model.lora import (
    LoRAConfig,
    apply_lora,
    lora_layers,
    lora_state_dict,
    merge_lora,
    remove_lora,
    unmerge_lora,
)
from llmscratch.runs.hf_import import load_hf_model
from llmscratch.runs.peft_adapters import export_peft_adapter, fuse_pieces, import_peft_adapter
from tests.hf_tiny import VOCAB, hf_model
from tests.test_families import TINY, tiny

try:  # the dev extra installs it; without it only the interchange tests are skipped
    import peft
except ImportError:
    peft = None
needs_peft = pytest.mark.skipif(peft is None, reason="interchange with PEFT needs peft "
                                "(pip install -e '.[dev]')")

TOLERANCE = 1e-4  # max abs logit difference against transformers + peft, fp32


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    return model.logits(model(ids))


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def randomize_adapters(model: nn.Module, seed: int = 1) -> None:
    """Random non-zero A and B, so every adapter changes its layer."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            for param in (layer.lora_A, layer.lora_B):
                param.copy_(0.1 * torch.randn(param.shape, generator=generator))


# --- our LoRA, every family ------------------------------------------------------------


@pytest.mark.parametrize("name", TINY)
def test_fresh_adapter_changes_nothing(name):
    model = tiny(name)
    ids = torch.randint(0, 512, (2, 16))
    with torch.no_grad():
        before = logits(model, ids)
        names = apply_lora(model, LoRAConfig(rank=4))
        assert torch.equal(logits(model, ids), before)  # B = 0: the update is exactly zero
    per_block = {"gpt2-tiny": ["attn.qkv", "attn.proj", "mlp.fc", "mlp.proj"],
                 "qwen3-moe-tiny": ["attn.qkv", "attn.proj", "mlp.router"],
                 "gpt-oss-tiny": ["attn.qkv", "attn.proj", "mlp.router"],
                 "qwen3-next-tiny": ["attn.qkv", "attn.proj", "mlp.router", "mlp.shared.gate",
                                     "mlp.shared.up", "mlp.shared.proj",
                                     "mlp.shared.shared_gate"]}.get(
        name, ["attn.qkv", "attn.proj", "mlp.gate", "mlp.up", "mlp.proj"])
    layers = range(model.config.n_layer)
    if name == "deepseek-v3-tiny":  # latent attention; a dense layer, then experts
        attention = ["attn.q_a", "attn.q_b", "attn.kv_a", "attn.kv_b", "attn.proj"]
        per_layer = [["mlp.gate", "mlp.up", "mlp.proj"]] + [
            ["mlp.router", "mlp.shared.gate", "mlp.shared.up", "mlp.shared.proj"]] * 2
        assert names == [f"blocks.{i}.{layer}" for i in layers
                         for layer in attention + per_layer[i]]
        return
    assert names == [f"blocks.{i}.{layer}" for i in layers for layer in per_block]


@pytest.mark.parametrize("name", TINY)
def test_merge_unmerge_and_remove(name):
    model = tiny(name)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.randint(0, 512, (2, 16))
    with torch.no_grad():
        base = logits(model, ids)
        names = apply_lora(model, LoRAConfig(rank=4, alpha=8.0))
        randomize_adapters(model)
        adapted = logits(model, ids)
        assert max_diff(adapted, base) > 1e-2  # the adapters matter

        merge_lora(model)
        # (Rounding of W + B A in fp32; a Gated DeltaNet's L2-normalised q, k amplify it, and
        # so do Gemma 4's unscaled scores.)
        tolerance = {"gemma4-tiny": 1e-4}.get(
            name, 3e-5 if model.config.full_attention_interval else 1e-5)
        assert max_diff(logits(model, ids), adapted) <= tolerance
        assert any(max_diff(model.state_dict()[k], v) > 1e-3 for k, v in original.items())
        unmerge_lora(model)
        state = model.state_dict()
        assert all(max_diff(state[k], v) <= 1e-6 for k, v in original.items())

        assert remove_lora(model) == names
        assert not lora_layers(model)
        assert set(model.state_dict()) == set(original)  # a full model again
        assert max_diff(logits(model, ids), adapted) <= tolerance


def test_only_adapters_train():
    model = tiny("llama-3-tiny")
    names = apply_lora(model, LoRAConfig(rank=2, targets=["blocks.*.attn.*", "*.mlp.up"]))
    adapters = {f"{n}.{ab}" for n in names for ab in ("lora_A", "lora_B")}
    assert {n for n, p in model.named_parameters() if p.requires_grad} == adapters
    assert set(lora_state_dict(model)) == adapters
    randomize_adapters(model)  # with B = 0, A's gradient would be zero

    ids = torch.randint(0, 512, (2, 16))
    loss_sum, count = model.next_token_loss(model(ids), ids)
    (loss_sum / count).backward()
    for name, param in model.named_parameters():
        if name in adapters:
            assert param.grad is not None and param.grad.abs().sum() > 0, name
        else:
            assert param.grad is None, name


def test_target_that_matches_nothing():
    model = tiny("llama-3-tiny")
    with pytest.raises(LLMScratchError, match=r"'blocks\.\*\.attn\.q_proj'.*blocks\.0\.attn\.qkv"):
        apply_lora(model, LoRAConfig(targets=["blocks.*.attn.qkv", "blocks.*.attn.q_proj"]))
    with pytest.raises(LLMScratchError, match="lm_head"):
        apply_lora(model, LoRAConfig(targets=["lm_head"]))
    assert not lora_layers(model)  # nothing applied before the error
    assert "lm_head" not in apply_lora(model, LoRAConfig(targets=["*"]))
    with pytest.raises(LLMScratchError, match="already has LoRA"):
        apply_lora(model, LoRAConfig())


@pytest.mark.parametrize("bad", [{"rank": 0}, {"alpha": 0.0}, {"dropout": 1.0}, {"targets": []}])
def test_config_is_checked(bad):
    field = next(iter(bad))
    with pytest.raises(LLMScratchError, match=field):
        LoRAConfig(**bad)


def test_fused_pieces_equal_the_pieces():
    """A LoRA on q, one on v (another rank and scaling) and none on k, as one on qkv."""
    rows, I = [8, 4, 4], 6
    A_q, B_q, A_v, B_v = torch.randn(2, I), torch.randn(8, 2), torch.randn(3, I), torch.randn(4, 3)
    A, B, scaling = fuse_pieces({0: (A_q, B_q, 0.5), 2: (A_v, B_v, 2.0)}, rows)
    assert A.shape == (5, I) and B.shape == (16, 5)
    x = torch.randn(7, I)
    fused = x @ A.T @ B.T * scaling  # (7, 16)
    torch.testing.assert_close(fused[:, :8], x @ A_q.T @ B_q.T * 0.5)
    torch.testing.assert_close(fused[:, 8:12], torch.zeros(7, 4))
    torch.testing.assert_close(fused[:, 12:], x @ A_v.T @ B_v.T * 2.0)


# --- interchange with PEFT on transformers models --------------------------------------

# PEFT's target_modules per family, every linear layer of the blocks; qwen3 leaves k_proj
# out and gives v_proj and o_proj their own rank and alpha, so pieces differ.
PEFT_TARGETS = {
    "gpt2": {"target_modules": ["c_attn", "c_proj", "c_fc"], "fan_in_fan_out": True},
    "llama": {"target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                 "up_proj", "down_proj"]},
    "qwen3": {"target_modules": ["q_proj", "v_proj", "o_proj", "up_proj"],
              "rank_pattern": {"v_proj": 2}, "alpha_pattern": {"o_proj": 3}},
}


def base_pair(family: str, folder) -> tuple[nn.Module, nn.Module]:
    """A tiny random transformers model, and ours imported from its saved folder."""
    hf = hf_model(family)
    hf.save_pretrained(folder)
    return hf, load_hf_model(folder).eval()  # eval: no LoRA dropout


@needs_peft
@pytest.mark.parametrize("family, targets", [
    ("gpt2", None), ("llama", None), ("qwen3", None),
    ("llama", ["blocks.1.attn.qkv", "blocks.0.mlp.*"]),  # not every layer: full PEFT names
])
def test_our_adapter_loads_in_peft(family, targets, tmp_path):
    hf, ours = base_pair(family, tmp_path / "base")
    config = LoRAConfig(rank=4, alpha=8.0, **({"targets": targets} if targets else {}))
    apply_lora(ours, config)
    randomize_adapters(ours)
    out = export_peft_adapter(ours, tmp_path / "adapter", str(tmp_path / "base"))
    ids = torch.randint(0, VOCAB, (2, 24))
    with torch.no_grad():
        base = hf(ids).logits
        theirs = peft.PeftModel.from_pretrained(hf, out).eval()(ids).logits
        assert max_diff(theirs, logits(ours, ids)) <= TOLERANCE
        assert max_diff(theirs, base) > 1e-2
    written = json.loads((out / "adapter_config.json").read_text())
    assert (written["r"], written["lora_alpha"]) == (4, 8)
    assert written["base_model_name_or_path"] == str(tmp_path / "base")
    assert written["fan_in_fan_out"] == (family == "gpt2")
    if targets:
        assert written["target_modules"] == ["model.layers.0.mlp.down_proj",
                                             "model.layers.0.mlp.gate_proj",
                                             "model.layers.0.mlp.up_proj",
                                             "model.layers.1.self_attn.k_proj",
                                             "model.layers.1.self_attn.q_proj",
                                             "model.layers.1.self_attn.v_proj"]


@needs_peft
@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen3"])
def test_peft_adapter_imports_and_round_trips(family, tmp_path):
    hf, ours = base_pair(family, tmp_path / "base")
    lora = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, init_lora_weights=False,
                           task_type="CAUSAL_LM", **PEFT_TARGETS[family])
    peft_model = peft.get_peft_model(hf, lora).eval()
    peft_model.save_pretrained(tmp_path / "adapter")
    names = import_peft_adapter(ours, tmp_path / "adapter")
    assert {n.split(".", 2)[-1] for n in names} >= {"attn.qkv", "attn.proj"}
    ids = torch.randint(0, VOCAB, (2, 24))
    with torch.no_grad():
        expected = peft_model(ids).logits
        assert max_diff(logits(ours, ids), expected) <= TOLERANCE

    # Back out again (a fused q/k/v of rank 3r becomes three rank-3r pieces): same logits.
    out = export_peft_adapter(ours, tmp_path / "again")
    fresh = peft.PeftModel.from_pretrained(hf_model(family), out).eval()
    with torch.no_grad():
        assert max_diff(fresh(ids).logits, expected) <= TOLERANCE


def test_adapter_for_another_architecture_is_refused(tmp_path):
    llama = tiny("llama-3-tiny")
    apply_lora(llama, LoRAConfig(rank=2))
    export_peft_adapter(llama, tmp_path / "llama")
    gpt2 = tiny("gpt2-tiny")
    apply_lora(gpt2, LoRAConfig(rank=2))
    export_peft_adapter(gpt2, tmp_path / "gpt2")

    narrower = tiny("llama-3-tiny", mlp_hidden=96)
    with pytest.raises(LLMScratchError, match=r"does not fit.*mlp\.\w+_proj has lora_A"):
        import_peft_adapter(narrower, tmp_path / "llama")
    with pytest.raises(LLMScratchError, match="transformer.h.0.attn.c_attn.*another arch"):
        import_peft_adapter(narrower, tmp_path / "gpt2")
    assert not lora_layers(narrower)  # refused before anything changed
    with pytest.raises(LLMScratchError, match="already exists; pass --overwrite"):
        export_peft_adapter(llama, tmp_path / "llama")


def test_moe_adapter_round_trips_through_the_format(tmp_path):
    """Qwen3-MoE: attention and the router (HF's mlp.gate) out and back in; no experts."""
    model = tiny("qwen3-moe-tiny")
    apply_lora(model, LoRAConfig(rank=2))
    randomize_adapters(model)
    out = export_peft_adapter(model, tmp_path / "moe")
    written = json.loads((out / "adapter_config.json").read_text())
    assert written["target_modules"] == ["gate", "k_proj", "o_proj", "q_proj", "v_proj"]
    fresh = tiny("qwen3-moe-tiny")
    import_peft_adapter(fresh, out)
    ids = torch.randint(0, 512, (2, 16))
    with torch.no_grad():
        assert max_diff(logits(fresh, ids), logits(model, ids)) <= 1e-5


def test_unsupported_peft_option_is_refused(tmp_path):
    model = tiny("qwen3-tiny")
    apply_lora(model, LoRAConfig(rank=2))
    out = export_peft_adapter(model, tmp_path / "dora")
    config = json.loads((out / "adapter_config.json").read_text())
    (out / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(LLMScratchError, match="use_dora=True is not supported"):
        import_peft_adapter(tiny("qwen3-tiny"), out)
