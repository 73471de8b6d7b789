"""Hugging Face checkpoints in and out, proven against `transformers` on tiny local models.

For each family: import a random HF model and compare logits (fp32, max abs
1e-4), greedy generation and parameter counts; export it back and reload it
with transformers; generate and eval through the CLI on the imported run.
Then every bad input gives one line and exit code 2.
"""

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import transformers
import yaml  # never skipped: these tests catch a wrong GQA layout or RoPE pairing
from safetensors import safe_open
from safetensors.torch import save_file

from llmscratch.cli import main
from llmscratch.errors import LLMScratchError
from llmscratch.generation.engine import Engine
from llmscratch.generation.sampling import SamplingConfig, generate
from llmscratch.model import get_preset
from llmscratch.model.hf_config import config_from_hf, family_of
from llmscratch.model.rope import rope_frequencies, rope_gain
from llmscratch.runs import load as load_module
from llmscratch.runs.hf_import import load_hf_model
from llmscratch.runs.load import load_for_inference
from llmscratch.runs.run import Run
from tests.hf_tiny import (
    FAMILIES,
    LAYER_TYPED,
    TEXT,
    VOCAB,
    hf_config,
    hf_model,
    save_folder,
    tokenizer,
)

TOLERANCE = 1e-4  # max abs logit difference, fp32


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    return model.logits(model(ids))


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """family -> (HF model, its folder, the run directory converted from it)."""
    root = tmp_path_factory.mktemp("hf")
    result = {}
    for family in FAMILIES:
        model = hf_model(family)
        folder = save_folder(model, family, root / family)
        run = root / f"{family}-run"
        assert main(["convert", "from-hf", str(folder), str(run)]) == 0
        result[family] = (model, folder, run)
    return result


@pytest.mark.parametrize("family", FAMILIES)
def test_import_matches_transformers(folders, family):
    hf, folder, _ = folders[family]
    ours = load_hf_model(folder)
    ids = torch.randint(0, VOCAB, (2, 40))
    with torch.no_grad():
        assert max_diff(logits(ours, ids), hf(ids).logits) <= TOLERANCE
    assert ours.num_params() == sum(p.numel() for p in hf.parameters())

    prompt = ids[0, :5].tolist()
    with torch.no_grad():
        theirs = hf.generate(ids[:1, :5], max_new_tokens=20, do_sample=False,
                             attention_mask=torch.ones(1, 5, dtype=torch.int64))
    ours_new = generate(ours, prompt, SamplingConfig(max_new_tokens=20, temperature=0))
    assert ours_new == theirs[0, 5:].tolist()


@pytest.mark.parametrize("family", FAMILIES)
def test_export_reloads_in_transformers(folders, family, tmp_path):
    hf, _, run = folders[family]
    out = tmp_path / "exported"
    assert main(["convert", "to-hf", str(run), str(out)]) == 0
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.randint(0, VOCAB, (2, 40))
    with torch.no_grad():
        assert max_diff(reloaded(ids).logits, hf(ids).logits) <= TOLERANCE
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    text = TEXT[:300]
    assert hf_tokenizer.encode(text, add_special_tokens=False) == tokenizer(family).encode(text)


def test_converted_run_works_with_generate_and_eval(folders, tmp_path, capsys):
    text_file = tmp_path / "text.txt"
    text_file.write_text(TEXT[:2000])
    for family in FAMILIES:
        run = folders[family][2]
        assert main(["generate", "--run", str(run), "--prompt", "First Citizen:",
                     "--max-new-tokens", "10", "--temperature", "0", "--json"]) == 0
        assert len(json.loads(capsys.readouterr().out)["token_ids"]) <= 10  # may stop early
        assert main(["eval", "--run", str(folders[family][2]), "--data", str(text_file),
                     "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["tokens"] > 100


@pytest.mark.parametrize("family", ["qwen3_next", "qwen3_5_text"])
def test_deltanet_past_one_chunk_and_64_greedy_tokens_match_transformers(folders, tmp_path,
                                                                         family):
    """150 tokens (the chunked form across three chunks of 64: Gated DeltaNet layers), 64
    greedy tokens through our cache (the recurrent form), and the exported model's loss."""
    hf, folder, run = folders[family]
    ours = load_hf_model(folder)
    ids = torch.randint(0, VOCAB, (2, 150), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        loss_sum, count = ours.next_token_loss(ours(ids)[:, :-1], ids[:, 1:])
        assert abs(loss_sum.item() / count.item() - hf(ids, labels=ids).loss.item()) <= TOLERANCE
        theirs = hf.generate(ids[:1, :10], max_new_tokens=64, do_sample=False,
                             attention_mask=torch.ones(1, 10, dtype=torch.int64))
    new = generate(ours, ids[0, :10].tolist(), SamplingConfig(max_new_tokens=64, temperature=0))
    assert new == theirs[0, 10:].tolist()
    out = tmp_path / "exported"
    assert main(["convert", "to-hf", str(run), str(out)]) == 0
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        assert abs(reloaded(ids, labels=ids).loss.item() - hf(ids, labels=ids).loss.item()) \
            <= TOLERANCE


def test_sharded_checkpoint_and_bf16(tmp_path):
    hf = hf_model("llama")
    folder = save_folder(hf, "llama", tmp_path / "sharded", max_shard_size="20KB")
    assert (folder / "model.safetensors.index.json").is_file()
    ids = torch.randint(0, VOCAB, (1, 30))
    with torch.no_grad():
        expected = hf(ids).logits
        assert max_diff(logits(load_hf_model(folder), ids), expected) <= TOLERANCE
        half = load_hf_model(folder, dtype="bf16")
        assert half.tok_emb.weight.dtype == torch.bfloat16
        assert max_diff(logits(half, ids), expected) < 0.1 * expected.abs().max().item()


@pytest.mark.parametrize("bf16_is_fast", [True, False])
def test_bf16_weights_are_widened_for_inference_only_where_bf16_is_slow(tmp_path, monkeypatch,
                                                                        bf16_is_fast):
    """On a CPU without fast bf16 matmuls (an AVX2-only x86) a bf16 run loads in fp32 for
    generate, chat, serve and eval, exactly; asked for, bf16 stays bf16."""
    folder = save_folder(hf_model("qwen3"), "qwen3", tmp_path / "hf")
    run = tmp_path / "run"
    assert main(["convert", "from-hf", str(folder), str(run), "--dtype", "bf16"]) == 0
    monkeypatch.setattr(load_module, "cpu_bf16_is_fast", lambda: bf16_is_fast)
    kept, _, _ = load_for_inference(run, dtype="bf16")
    default, _, _ = load_for_inference(run)
    assert kept.tok_emb.weight.dtype == torch.bfloat16
    assert default.tok_emb.weight.dtype == (torch.bfloat16 if bf16_is_fast else torch.float32)
    assert torch.equal(default.tok_emb.weight.float(), kept.tok_emb.weight.float())


def test_sliding_window_matches_transformers(tmp_path):
    hf = hf_model("qwen3", use_sliding_window=True, sliding_window=8, max_window_layers=0)
    ours = load_hf_model(save_folder(hf, "qwen3", tmp_path / "windowed"))
    assert ours.config.sliding_window == 8
    ids = torch.randint(0, VOCAB, (2, 40))  # longer than the window
    with torch.no_grad():
        assert max_diff(logits(ours, ids), hf(ids).logits) <= TOLERANCE


def assert_field_refused(hf_folder: Path, tmp_path: Path, capsys, field: str, value,
                         named: str) -> None:
    """`convert from-hf` of `hf_folder` with config.json's `field` set to `value` fails in one
    `error:` line that contains `named`, and leaves no run behind."""
    folder = tmp_path / "hf"
    shutil.copytree(hf_folder, folder)
    config = json.loads((folder / "config.json").read_text())
    config[field] = value
    (folder / "config.json").write_text(json.dumps(config))
    assert main(["convert", "from-hf", str(folder), str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and named in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def mean_loss(logits: torch.Tensor, ids: torch.Tensor) -> float:
    """Mean next-token cross-entropy of (B, T, V) logits on the ids they were computed from."""
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(),
                                             ids[:, 1:].flatten()).item()


def check_parity(hf, ours, run: Path, tmp_path: Path) -> transformers.PreTrainedModel:
    """On sequences of 48 tokens: the same loss as `hf` (1e-4), the same 64 greedy tokens as
    its `generate` through our KV cache, the engine (paged cache, a batch of two prompts)
    equal to our uncached forward pass, and `run` exported to the same loss. Returns the
    reloaded export."""
    ids = torch.randint(0, VOCAB, (2, 48))
    with torch.no_grad():
        expected = mean_loss(hf(ids).logits, ids)
        assert abs(mean_loss(logits(ours, ids), ids) - expected) <= TOLERANCE

    prompt = ids[0, :5].tolist()
    with torch.no_grad():
        theirs = hf.generate(ids[:1, :5], max_new_tokens=64, do_sample=False,
                             attention_mask=torch.ones(1, 5, dtype=torch.int64))[0, 5:].tolist()
    greedy = SamplingConfig(max_new_tokens=64, temperature=0)
    assert generate(ours, prompt, greedy) == theirs
    prompts = [prompt, ids[1, :11].tolist()]
    uncached = []
    for p in prompts:
        tokens = list(p)
        with torch.no_grad():
            for _ in range(20):
                tokens.append(int(logits(ours, torch.tensor([tokens]))[0, -1].argmax()))
        uncached.append(tokens[len(p):])
    engine = Engine(ours, block_size=4, max_batch=4)
    assert engine.generate(prompts, SamplingConfig(max_new_tokens=20, temperature=0)) == uncached

    out = tmp_path / "exported"
    assert main(["convert", "to-hf", str(run), str(out)]) == 0
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        assert abs(mean_loss(reloaded(ids).logits, ids) - expected) <= TOLERANCE
    return reloaded


@pytest.mark.parametrize("family", LAYER_TYPED)
def test_local_and_global_layers_match_transformers(folders, family, tmp_path):
    """Gemma 3, Olmo 3 and gpt-oss: local layers (a window of 8) and global ones, each kind
    with its own RoPE (gpt-oss: one for both), on sequences longer than the window: the same
    loss (1e-4), the same 64 greedy tokens through our KV cache and through the engine, and
    an export with the same loss."""
    hf, folder, run = folders[family]
    ours = load_hf_model(folder)
    c = ours.config
    kinds = [True, False, True] if family == "gpt_oss" else [True, True, False, True]
    assert [c.layer_is_local(i) for i in range(c.n_layer)] == kinds
    reloaded = check_parity(hf, ours, run, tmp_path)
    assert reloaded.config.layer_types == hf.config.layer_types


def test_deepseek_v3_matches_transformers(folders, tmp_path):
    """DeepSeek V3: latent attention (a query latent, interleaved RoPE, YaRN with DeepSeek's
    mscale), a dense first layer, then experts (sigmoid routing with a bias, in groups, a
    shared expert), on sequences longer than YaRN's original context: the same loss (1e-4),
    the same 64 greedy tokens through our KV cache (which holds the latents) and through the
    engine (latents and RoPE keys in its paged blocks), and an export with the same loss."""
    hf, folder, run = folders["deepseek_v3"]
    ours = load_hf_model(folder)
    c = ours.config
    assert [c.layer_is_dense(i) for i in range(c.n_layer)] == [True, False, False]
    assert ours.new_cache(1, 8).keys[0].shape == (1, 1, 8, 16)  # (B, 1, T, kv_lora_rank)
    check_parity(hf, ours, run, tmp_path)


def test_deepseek_v3_without_a_query_latent_matches_transformers(tmp_path):
    """q_lora_rank null (a plain query projection, as DeepSeek V2 Lite), RoPE pairs not
    interleaved, no groups, weights not renormalised, unscaled RoPE: logits within 1e-4,
    both ways."""
    hf = hf_model("deepseek_v3", q_lora_rank=None, rope_interleave=False, n_group=1,
                  topk_group=1, norm_topk_prob=False,
                  rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    folder = save_folder(hf, "deepseek_v3", tmp_path / "hf")
    ours = load_hf_model(folder)
    assert (ours.config.q_lora_rank, ours.config.moe_groups) == (0, 1)
    ids = torch.randint(0, VOCAB, (2, 40))
    with torch.no_grad():
        assert max_diff(logits(ours, ids), hf(ids).logits) <= TOLERANCE
    run, out = tmp_path / "run", tmp_path / "exported"
    assert main(["convert", "from-hf", str(folder), str(run)]) == 0
    assert main(["convert", "to-hf", str(run), str(out)]) == 0
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        assert max_diff(reloaded(ids).logits, hf(ids).logits) <= TOLERANCE


def test_deepseek_v3_multi_token_prediction_layer_is_left_out(folders, tmp_path):
    """The released checkpoint holds one layer more than num_hidden_layers (its multi-token
    prediction module, model.layers.61): it is not imported. Other unknown tensors still are
    refused."""
    hf, folder, _ = folders["deepseek_v3"]
    tensors = {}
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        for name in f.keys():
            tensors[name] = f.get_tensor(name)
    mtp = tmp_path / "mtp"
    shutil.copytree(folder, mtp)
    save_file({**tensors, "model.layers.3.eh_proj.weight": torch.zeros(32, 64),
               "model.layers.3.enorm.weight": torch.ones(32)}, str(mtp / "model.safetensors"))
    ids = torch.randint(0, VOCAB, (1, 20))
    with torch.no_grad():
        assert max_diff(logits(load_hf_model(mtp), ids), hf(ids).logits) <= TOLERANCE
    save_file({**tensors, "model.layers.2.mlp.extra.weight": torch.ones(32)},
              str(mtp / "model.safetensors"))
    with pytest.raises(LLMScratchError, match="model.layers.2.mlp.extra.weight"):
        load_hf_model(mtp)


@pytest.mark.parametrize("field, value, named", [
    ("quantization_config", {"quant_method": "fp8"}, "quantized (fp8)"),
    ("num_key_value_heads", 2, "num_key_value_heads=2"),
    ("attention_bias", True, "attention_bias=True"),
    ("n_group", 3, "model.moe_groups=3"),  # 8 experts do not split into 3 groups
    ("rope_parameters", {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0,
                         "mscale_all_dim": 1.0}, "mscale_all_dim with rope type 'linear'"),
])
def test_a_deepseek_v3_field_we_do_not_support_is_named(folders, tmp_path, capsys, field,
                                                        value, named):
    assert_field_refused(folders["deepseek_v3"][1], tmp_path, capsys, field, value, named)


# DeepSeek V3 as released, in bf16 (the hub's own is fp8, with a quantization_config that
# is refused): its multi-token prediction layer (num_nextn_predict_layers) is not imported.
DEEPSEEK_V3 = {
    "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3",
    "vocab_size": 129280, "hidden_size": 7168, "intermediate_size": 18432,
    "moe_intermediate_size": 2048, "num_hidden_layers": 61, "num_nextn_predict_layers": 1,
    "num_attention_heads": 128, "num_key_value_heads": 128, "n_shared_experts": 1,
    "n_routed_experts": 256, "ep_size": 1, "routed_scaling_factor": 2.5, "kv_lora_rank": 512,
    "q_lora_rank": 1536, "qk_rope_head_dim": 64, "v_head_dim": 128, "qk_nope_head_dim": 128,
    "topk_method": "noaux_tc", "n_group": 8, "topk_group": 4, "num_experts_per_tok": 8,
    "moe_layer_freq": 1, "first_k_dense_replace": 3, "norm_topk_prob": True,
    "scoring_func": "sigmoid", "hidden_act": "silu", "max_position_embeddings": 163840,
    "rms_norm_eps": 1e-06, "rope_theta": 10000, "tie_word_embeddings": False,
    "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0,
                     "mscale_all_dim": 1.0, "original_max_position_embeddings": 4096,
                     "type": "yarn"},
    "attention_bias": False, "torch_dtype": "bfloat16",
}


def test_deepseek_v3_config_json_reads_as_its_preset():
    """Read as transformers reads it, also when the fields at transformers' defaults are left
    out; the fp8 original's quantization_config is refused in one line."""
    config = config_from_hf(DEEPSEEK_V3)
    assert config == get_preset("deepseek-v3")
    assert family_of(config) == "deepseek_v3"
    defaults = ("q_lora_rank", "kv_lora_rank", "n_group", "topk_group", "n_shared_experts",
                "first_k_dense_replace", "routed_scaling_factor", "norm_topk_prob",
                "intermediate_size", "moe_intermediate_size", "n_routed_experts")
    sparse = {k: v for k, v in DEEPSEEK_V3.items() if k not in defaults}
    assert config_from_hf(sparse) == config
    theirs = transformers.AutoConfig.for_model(**{k: v for k, v in sparse.items()
                                                  if k != "architectures"})
    assert (theirs.q_lora_rank, theirs.n_group, theirs.topk_group, theirs.first_k_dense_replace,
            theirs.routed_scaling_factor, theirs.rope_interleave) == (
        config.q_lora_rank, config.moe_groups, config.moe_groups_active,
        config.moe_dense_layers, config.moe_routed_scale, config.rope_interleave)
    fp8 = {**DEEPSEEK_V3, "quantization_config": {"quant_method": "fp8", "fmt": "e4m3"}}
    with pytest.raises(LLMScratchError, match=r"quantized \(fp8\)"):
        config_from_hf(fp8)


# The released checkpoints' config.json in the hub's older spelling (rope_theta, rope_scaling,
# Gemma's rope_local_base_freq and sliding_window_pattern, no layer_types).
GEMMA3_4B = {
    "architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text", "vocab_size": 262208,
    "hidden_size": 2560, "intermediate_size": 10240, "num_hidden_layers": 34,
    "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
    "hidden_activation": "gelu_pytorch_tanh", "max_position_embeddings": 131072,
    "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06, "rope_local_base_freq": 10000.0,
    "rope_scaling": {"factor": 8.0, "rope_type": "linear"}, "rope_theta": 1000000.0,
    "sliding_window": 1024, "sliding_window_pattern": 6, "attn_logit_softcapping": None,
    "final_logit_softcapping": None, "attention_bias": False, "torch_dtype": "bfloat16",
}
# Gemma 3 4B as released: text and images, the text model's fields given only where they
# differ from Gemma3TextConfig's defaults.
GEMMA3_4B_MULTIMODAL = {
    "architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
    "text_config": {"hidden_size": 2560, "intermediate_size": 10240,
                    "model_type": "gemma3_text", "num_hidden_layers": 34,
                    "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
                    "sliding_window": 1024},
    "vision_config": {"model_type": "siglip_vision_model"}, "torch_dtype": "bfloat16",
}
OLMO3_7B = {
    "architectures": ["Olmo3ForCausalLM"], "model_type": "olmo3", "vocab_size": 100278,
    "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 32, "hidden_act": "silu",
    "max_position_embeddings": 65536, "rms_norm_eps": 1e-06, "rope_theta": 500000,
    "rope_scaling": {"attention_factor": 1.2079441541679836, "beta_fast": 32, "beta_slow": 1,
                     "factor": 8.0, "original_max_position_embeddings": 8192,
                     "rope_type": "yarn"},
    "sliding_window": 4096, "attention_bias": False, "tie_word_embeddings": False,
    "layer_types": ["sliding_attention"] * 3 + ["full_attention"] + ["sliding_attention"] * 3
    + ["full_attention"] + (["sliding_attention"] * 3 + ["full_attention"]) * 6,
    "torch_dtype": "bfloat16",
}

# Qwen3-Next 80B-A3B as released: every fourth layer full attention by full_attention_interval.
QWEN3_NEXT_80B = {
    "architectures": ["Qwen3NextForCausalLM"], "model_type": "qwen3_next", "vocab_size": 151936,
    "hidden_size": 2048, "intermediate_size": 5120, "num_hidden_layers": 48,
    "num_attention_heads": 16, "num_key_value_heads": 2, "head_dim": 256, "hidden_act": "silu",
    "max_position_embeddings": 262144, "rms_norm_eps": 1e-06, "rope_theta": 10000000,
    "rope_scaling": None, "partial_rotary_factor": 0.25, "attention_bias": False,
    "full_attention_interval": 4, "linear_conv_kernel_dim": 4, "linear_key_head_dim": 128,
    "linear_value_head_dim": 128, "linear_num_key_heads": 16, "linear_num_value_heads": 32,
    "decoder_sparse_step": 1, "mlp_only_layers": [], "moe_intermediate_size": 512,
    "shared_expert_intermediate_size": 512, "num_experts": 512, "num_experts_per_tok": 10,
    "norm_topk_prob": True, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
}


@pytest.mark.parametrize("hub, preset", [(GEMMA3_4B, "gemma-3-4b"), (OLMO3_7B, "olmo-3-7b"),
                                         (GEMMA3_4B_MULTIMODAL, "gemma-3-4b")])
def test_a_released_config_json_reads_as_its_preset(hub, preset):
    """Read as transformers reads it: scaling on the global layers only, the local ones with
    their own base."""
    def explicit(c):  # derived sizes (0 in presets) spelled out, as an import has them
        return replace(c, n_kv_head=c.kv_heads, head_size=c.head_dim, mlp_hidden=c.mlp_dim)

    config = config_from_hf(hub)
    assert explicit(config) == explicit(get_preset(preset))
    theirs = transformers.AutoConfig.for_model(**{k: v for k, v in hub.items()
                                                  if k != "architectures"}).get_text_config()
    assert (theirs.vocab_size, theirs.num_attention_heads, theirs.num_key_value_heads,
            theirs.max_position_embeddings) == (config.vocab_size, config.n_head,
                                                config.kv_heads, config.context_length)
    assert theirs.layer_types == ["sliding_attention" if config.layer_is_local(i)
                                  else "full_attention" for i in range(config.n_layer)]
    assert theirs.rope_parameters["full_attention"]["rope_type"] == config.rope_scaling
    assert theirs.rope_parameters["sliding_attention"]["rope_type"] == "default"
    assert theirs.rope_parameters["sliding_attention"]["rope_theta"] == config.rope_local_theta


def test_the_text_model_of_a_multimodal_gemma3_is_imported(tmp_path):
    """Gemma 3 4B and larger are released as Gemma3ForConditionalGeneration: its text model
    (under model.language_model., or language_model.model. as transformers 4 saved it) is
    imported without the vision encoder, to the logits of text without images."""
    vision = transformers.SiglipVisionConfig(hidden_size=16, intermediate_size=32,
                                             num_hidden_layers=1, num_attention_heads=2,
                                             image_size=28, patch_size=14)
    config = transformers.Gemma3Config(text_config=hf_config("gemma3_text"),
                                       vision_config=vision, mm_tokens_per_image=4,
                                       boi_token_index=VOCAB - 3, eoi_token_index=VOCAB - 2,
                                       image_token_index=VOCAB - 1)
    torch.manual_seed(0)
    hf = transformers.Gemma3ForConditionalGeneration(config).eval()
    with torch.no_grad():
        for param in hf.parameters():
            param.add_(0.1 * torch.randn_like(param))
    folder = save_folder(hf, "gemma3_text", tmp_path / "mm")
    ids = torch.randint(0, VOCAB - 3, (2, 40))
    with torch.no_grad():
        expected = hf(ids).logits
        assert max_diff(logits(load_hf_model(folder), ids), expected) <= TOLERANCE

    old = tmp_path / "mm-4"  # the names transformers 4 saved
    old.mkdir()
    shutil.copy(folder / "config.json", old / "config.json")
    renames = {"model.language_model.": "language_model.model.", "model.": "",
               "lm_head.": "language_model.lm_head."}
    tensors = {}
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        for name in f.keys():
            prefix = next(p for p in [*renames, ""] if name.startswith(p))
            tensors[renames.get(prefix, "") + name.removeprefix(prefix)] = f.get_tensor(name)
    assert "language_model.model.layers.0.self_attn.q_proj.weight" in tensors
    save_file(tensors, str(old / "model.safetensors"))
    with torch.no_grad():
        assert max_diff(logits(load_hf_model(old), ids), expected) <= TOLERANCE


# gpt-oss-20b's config.json as released: its experts in MXFP4.
GPT_OSS_20B = {
    "architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss", "attention_bias": True,
    "head_dim": 64, "hidden_act": "silu", "hidden_size": 2880, "intermediate_size": 2880,
    "layer_types": ["sliding_attention", "full_attention"] * 12,
    "max_position_embeddings": 131072, "num_attention_heads": 64, "num_experts_per_tok": 4,
    "num_hidden_layers": 24, "num_key_value_heads": 8, "num_local_experts": 32,
    "quantization_config": {"modules_to_not_convert": ["model.layers.*.self_attn"],
                            "quant_method": "mxfp4"},
    "rms_norm_eps": 1e-05, "rope_theta": 150000,
    "rope_scaling": {"beta_fast": 32.0, "beta_slow": 1.0, "factor": 32.0,
                     "original_max_position_embeddings": 4096, "rope_type": "yarn",
                     "truncate": False},
    "sliding_window": 128, "swiglu_limit": 7.0, "tie_word_embeddings": False,
    "torch_dtype": "bfloat16", "vocab_size": 201088,
}


def test_gpt_oss_20b_reads_as_its_preset_and_its_mxfp4_experts_are_refused(folders, tmp_path,
                                                                          capsys):
    """Saved in bf16 (no quantization_config), the file is our gpt-oss-20b preset, whose YaRN
    (bounds unrounded) is transformers'; as released, one line names the quantization."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    bf16 = {k: v for k, v in GPT_OSS_20B.items() if k != "quantization_config"}
    config = config_from_hf(bf16)
    explicit = {"n_kv_head": config.kv_heads, "head_size": config.head_dim}
    assert config == get_preset("gpt-oss-20b", **explicit)
    theirs = transformers.AutoConfig.for_model(**{k: v for k, v in bf16.items()
                                                  if k != "architectures"})
    inv_freq, gain = ROPE_INIT_FUNCTIONS["yarn"](theirs)
    torch.testing.assert_close(rope_frequencies(config), inv_freq)
    assert rope_gain(config) == pytest.approx(gain)

    folder = tmp_path / "hf"  # a tiny gpt-oss folder (weights, tokenizer) with the real config
    shutil.copytree(folders["gpt_oss"][1], folder)
    (folder / "config.json").write_text(json.dumps(GPT_OSS_20B))
    assert main(["convert", "from-hf", str(folder), str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "quantized (mxfp4)" in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_gpt_oss_without_attention_biases_is_refused_in_one_line():
    with pytest.raises(LLMScratchError, match="attention_bias=False is not supported"):
        config_from_hf({**GPT_OSS_20B, "quantization_config": None, "attention_bias": False})


def test_the_text_model_of_a_multimodal_qwen3_5_is_imported(tmp_path):
    """Qwen3.5 is released as Qwen3_5ForConditionalGeneration: its text model (under
    model.language_model.) is imported without the vision encoder (model.visual.), to the
    logits of text without images."""
    vision = {"depth": 1, "hidden_size": 16, "intermediate_size": 32, "num_heads": 2,
              "out_hidden_size": 32, "patch_size": 14, "num_position_embeddings": 16}
    config = transformers.Qwen3_5Config(text_config=hf_config("qwen3_5_text").to_dict(),
                                        vision_config=vision, image_token_id=VOCAB - 3,
                                        video_token_id=VOCAB - 2,
                                        vision_start_token_id=VOCAB - 1,
                                        vision_end_token_id=VOCAB - 4)
    torch.manual_seed(0)
    hf = transformers.Qwen3_5ForConditionalGeneration(config).eval()
    with torch.no_grad():
        for param in hf.parameters():
            param.add_(0.1 * torch.randn_like(param))
    folder = save_folder(hf, "qwen3_5_text", tmp_path / "mm")
    ids = torch.randint(0, VOCAB - 4, (2, 80))
    with torch.no_grad():
        assert max_diff(logits(load_hf_model(folder), ids), hf(input_ids=ids).logits) \
            <= TOLERANCE
    assert main(["convert", "from-hf", str(folder), str(tmp_path / "run")]) == 0


@pytest.mark.parametrize("field, value, named", [
    ("final_logit_softcapping", 30.0, "final_logit_softcapping=30.0"),
    ("use_bidirectional_attention", True, "use_bidirectional_attention=True"),
    ("layer_types", ["sliding_attention", "full_attention", "full_attention",
                     "sliding_attention"], "layer_types"),
    ("rope_parameters", {"full_attention": {"rope_type": "dynamic", "factor": 4.0},
                         "sliding_attention": {"rope_type": "default"}}, "'dynamic'"),
    ("rope_parameters", {"full_attention": {"rope_type": "default"},
                         "sliding_attention": {"rope_type": "linear", "factor": 2.0}},
     "sliding-window layers ('linear')"),
])
def test_a_gemma3_field_we_do_not_support_is_named(folders, tmp_path, capsys, field, value,
                                                  named):
    assert_field_refused(folders["gemma3_text"][1], tmp_path, capsys, field, value, named)


def test_gemma4_kv_sharing_matches_transformers(folders, tmp_path):
    """Gemma 4: six layers (local, local, global, twice), the last two reusing the keys and
    values of layers 3 and 2 with a double-wide MLP, values normalised, unscaled scores,
    random layer scalars, logits soft-capped at 2: the same loss (1e-4), the same 64 greedy
    tokens through our KV cache (which holds four layers) and through the engine (the sharing
    layers read their sources' paged blocks), an export with the same loss, and our training
    loss equal to theirs."""
    hf, folder, run = folders["gemma4_text"]
    ours = load_hf_model(folder)
    c = ours.config
    assert [c.layer_is_local(i) for i in range(c.n_layer)] == [True, True, False] * 2
    assert (c.kv_shared_layers, c.kv_shared_mlp_double, c.attn_scalar) == (2, True, 1.0)
    assert (c.logit_softcap, c.global_head_size, c.rope_proportional) == (2.0, 32, 0.25)
    assert [k is None for k in ours.new_cache(1, 8).keys] == [False] * 4 + [True] * 2
    reloaded = check_parity(hf, ours, run, tmp_path)
    assert reloaded.config.kv_sharing_modes == hf.config.kv_sharing_modes
    ids = torch.randint(0, VOCAB, (2, 48))
    with torch.no_grad():  # the training loss (through the capped logits) is theirs too
        loss_sum, count = ours.next_token_loss(ours(ids)[:, :-1], ids[:, 1:])
        assert abs(loss_sum.item() / count.item() - hf(ids, labels=ids).loss.item()) \
            <= TOLERANCE


def test_gemma4_key_and_value_tensors_of_sharing_layers_are_left_out(folders, tmp_path):
    """The released checkpoints hold k_proj, v_proj and k_norm in the KV-sharing layers too,
    which nothing reads: they are not imported. Other unknown tensors still are refused."""
    hf, folder, _ = folders["gemma4_text"]
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    unused = tmp_path / "unused"
    shutil.copytree(folder, unused)
    save_file({**tensors, "model.layers.4.self_attn.k_proj.weight": torch.ones(32, 32),
               "model.layers.5.self_attn.v_proj.weight": torch.ones(64, 32),
               "model.layers.4.self_attn.k_norm.weight": torch.ones(16)},
              str(unused / "model.safetensors"))
    ids = torch.randint(0, VOCAB, (1, 20))
    with torch.no_grad():
        assert max_diff(logits(load_hf_model(unused), ids), hf(ids).logits) <= TOLERANCE
    save_file({**tensors, "model.layers.3.self_attn.extra.weight": torch.ones(32)},
              str(unused / "model.safetensors"))
    with pytest.raises(LLMScratchError, match="model.layers.3.self_attn.extra.weight"):
        load_hf_model(unused)


def test_the_text_model_of_a_multimodal_gemma4_is_imported(tmp_path):
    """Gemma 4 is released as Gemma4ForConditionalGeneration: its text model (under
    model.language_model.) is imported without the vision encoder and its embedder, to the
    logits of text without images, and converts back to a Gemma4ForCausalLM."""
    vision = transformers.Gemma4VisionConfig(hidden_size=16, intermediate_size=32,
                                             num_hidden_layers=1, num_attention_heads=2,
                                             num_key_value_heads=2, head_dim=8, patch_size=4,
                                             position_embedding_size=64)
    specials = dict(boi_token_id=VOCAB - 4, eoi_token_id=VOCAB - 3, image_token_id=VOCAB - 2,
                    video_token_id=VOCAB - 1, boa_token_id=VOCAB - 5, eoa_token_index=VOCAB - 6,
                    audio_token_id=VOCAB - 7)
    config = transformers.Gemma4Config(
        text_config=hf_config("gemma4_text", pad_token_id=0).to_dict(), vision_config=vision,
        audio_config=None, **specials)
    torch.manual_seed(0)
    hf = transformers.Gemma4ForConditionalGeneration(config).eval()
    with torch.no_grad():
        for param in hf.parameters():
            param.add_(0.1 * torch.randn_like(param))
    folder = save_folder(hf, "gemma4_text", tmp_path / "mm")
    ids = torch.randint(0, VOCAB - 8, (2, 40))
    with torch.no_grad():
        expected = hf(input_ids=ids).logits
        assert max_diff(logits(load_hf_model(folder), ids), expected) <= TOLERANCE
    run, out = tmp_path / "run", tmp_path / "exported"
    assert main(["convert", "from-hf", str(folder), str(run)]) == 0
    assert main(["convert", "to-hf", str(run), str(out)]) == 0
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        assert max_diff(reloaded(ids).logits, expected) <= TOLERANCE


def test_a_gemma4_config_json_without_rope_parameters_reads_transformers_defaults():
    """Gemma4TextConfig's defaults where a file is silent: global heads of 512 (global_head_dim),
    "proportional" RoPE on a quarter of their pairs (base 1M; local layers 10k), per-layer
    inputs of 256 from a table of 262,144 ids, five local layers to one global."""
    config = config_from_hf({"architectures": ["Gemma4ForCausalLM"], "vocab_size": 262144,
                             "hidden_size": 64, "intermediate_size": 128,
                             "num_hidden_layers": 6, "num_attention_heads": 4,
                             "num_key_value_heads": 1, "max_position_embeddings": 1024,
                             "sliding_window": 512})
    assert (config.head_dim, config.global_head_size, config.rope_proportional) == (256, 512,
                                                                                   0.25)
    assert (config.rope_theta, config.rope_local_theta, config.rope_scaling) == (1e6, 1e4,
                                                                                "none")
    assert (config.per_layer_input, config.per_layer_vocab) == (256, 262144)
    assert (config.sliding_window_pattern, config.sliding_window) == (6, 512)
    assert (config.kv_shared_layers, config.logit_softcap) == (0, 0.0)


def test_gemma4_global_layers_with_values_from_the_keys_match_transformers(tmp_path):
    """attention_k_eq_v (the global layers' values are their keys' projection, no v_proj) and
    one key/value head in the global layers (two in the local ones): the same loss, 64 greedy
    tokens through our cache and the engine, and an export with the same loss."""
    hf = hf_model("gemma4_text", attention_k_eq_v=True, num_global_key_value_heads=1)
    assert "model.layers.2.self_attn.v_proj.weight" not in hf.state_dict()
    folder = save_folder(hf, "gemma4_text", tmp_path / "hf")
    run = tmp_path / "run"
    assert main(["convert", "from-hf", str(folder), str(run)]) == 0
    ours = load_hf_model(folder)
    assert (ours.config.global_k_is_v, ours.config.global_kv_heads) == (True, 1)
    assert ours.new_cache(1, 8).keys[2].shape == (1, 1, 8, 32)  # 1 head of 32 (local: 2 of 16)
    check_parity(hf, ours, run, tmp_path)


@pytest.mark.parametrize("field, value, named", [
    ("enable_moe_block", True, "enable_moe_block=True"),
    ("use_bidirectional_attention", "all", "use_bidirectional_attention='all'"),
    ("hidden_activation", "gelu", "hidden_activation='gelu'"),
    ("rope_parameters", {"full_attention": {"rope_type": "dynamic", "factor": 2.0},
                         "sliding_attention": {"rope_type": "default"}}, "'dynamic'"),
    ("num_kv_shared_layers", 4, "model.kv_shared_layers=4"),  # global layers, no source
])
def test_a_gemma4_field_we_do_not_support_is_named(folders, tmp_path, capsys, field, value,
                                                  named):
    assert_field_refused(folders["gemma4_text"][1], tmp_path, capsys, field, value, named)


def test_the_released_qwen3_next_config_json_reads_as_its_preset():
    config = config_from_hf(QWEN3_NEXT_80B)
    assert replace(config, mlp_hidden=0) == get_preset("qwen3-next-80b-a3b", mlp_hidden=0)
    assert config.mlp_dim == 512
    theirs = transformers.AutoConfig.for_model(**{k: v for k, v in QWEN3_NEXT_80B.items()
                                                  if k != "architectures"})
    assert theirs.layer_types == ["linear_attention" if config.layer_is_linear(i)
                                  else "full_attention" for i in range(config.n_layer)]
    assert theirs.rope_parameters["partial_rotary_factor"] == config.rope_fraction == 0.25
    assert theirs.rope_parameters["rope_theta"] == config.rope_theta


@pytest.mark.parametrize("field, value, named", [
    ("decoder_sparse_step", 2, "decoder_sparse_step"),
    ("mlp_only_layers", [0], "mlp_only_layers"),
    ("attention_bias", True, "attention_bias=True"),
    ("hidden_act", "gelu", "hidden_act='gelu'"),
    ("layer_types", ["linear_attention", "full_attention", "linear_attention",
                     "linear_attention"], "layer_types"),
    ("shared_expert_intermediate_size", 0, "shared_expert_intermediate_size"),
])
def test_a_qwen3_next_field_we_do_not_support_is_named(folders, tmp_path, capsys, field, value,
                                                      named):
    assert_field_refused(folders["qwen3_next"][1], tmp_path, capsys, field, value, named)


def test_our_pretrained_run_exports_to_gpt2(tiny_run, tmp_path):
    out = tmp_path / "demo-hf"
    assert main(["convert", "to-hf", str(tiny_run), str(out)]) == 0
    model, _, _ = load_for_inference(tiny_run)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(reloaded).__name__ == "GPT2LMHeadModel"
    # GPT-2's own config.json field, which llama.cpp's converter reads (bench/llamacpp_speed.py)
    config = json.loads((out / "config.json").read_text())
    assert config["n_ctx"] == config["n_positions"] == model.config.context_length
    ids = torch.randint(0, model.config.vocab_size, (2, 30))
    with torch.no_grad():
        assert max_diff(reloaded(ids).logits, logits(model, ids)) <= TOLERANCE


# --- bad input: one line, exit code 2 ------------------------------------------------


def convert_error(capsys, *args: str) -> str:
    capsys.readouterr()  # drop what building the fixture printed
    assert main(["convert", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


@pytest.fixture
def qwen_folder(tmp_path):
    return save_folder(hf_model("qwen3"), "qwen3", tmp_path / "qwen3")


def test_unknown_architecture_lists_the_supported_ones(qwen_folder, tmp_path, capsys):
    config = json.loads((qwen_folder / "config.json").read_text())
    config["architectures"] = ["MistralForCausalLM"]
    (qwen_folder / "config.json").write_text(json.dumps(config))
    err = convert_error(capsys, "from-hf", str(qwen_folder), str(tmp_path / "out"))
    assert "MistralForCausalLM" in err and "LlamaForCausalLM" in err and "GPT2LMHeadModel" in err


def test_missing_shard(tmp_path, capsys):
    folder = save_folder(hf_model("qwen3"), "qwen3", tmp_path / "q", max_shard_size="20KB")
    shard = sorted(folder.glob("model-*.safetensors"))[-1]
    shard.unlink()
    err = convert_error(capsys, "from-hf", str(folder), str(tmp_path / "out"))
    assert "missing shard" in err and shard.name in err


def rewrite_weights(folder, edit) -> None:
    path = folder / "model.safetensors"
    with safe_open(str(path), framework="pt") as f:
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    edit(tensors)
    save_file(tensors, path)


def test_missing_tensor_is_named(qwen_folder, tmp_path, capsys):
    name = "model.layers.1.self_attn.k_norm.weight"
    rewrite_weights(qwen_folder, lambda t: t.pop(name))
    err = convert_error(capsys, "from-hf", str(qwen_folder), str(tmp_path / "out"))
    assert name in err and "missing" in err


def test_shape_mismatch_names_tensor_and_both_shapes(qwen_folder, tmp_path, capsys):
    name = "model.layers.0.mlp.up_proj.weight"
    rewrite_weights(qwen_folder, lambda t: t.update({name: torch.zeros(60, 32)}))
    err = convert_error(capsys, "from-hf", str(qwen_folder), str(tmp_path / "out"))
    assert name in err and "(60, 32)" in err and "(64, 32)" in err


def test_unsupported_dtype(qwen_folder, tmp_path, capsys):
    err = convert_error(capsys, "from-hf", str(qwen_folder), str(tmp_path / "out"),
                        "--dtype", "fp16")
    assert "fp16" in err and "bf16" in err
    name = "model.norm.weight"
    rewrite_weights(qwen_folder, lambda t: t.update({name: torch.ones(32, dtype=torch.int8)}))
    err = convert_error(capsys, "from-hf", str(qwen_folder), str(tmp_path / "out"))
    assert name in err and "I8" in err


def test_corrupt_safetensors_header(qwen_folder, tmp_path, capsys):
    path = qwen_folder / "model.safetensors"
    path.write_bytes(b"\xff" * 8 + path.read_bytes()[8:])  # header length: absurd
    err = convert_error(capsys, "from-hf", str(qwen_folder), str(tmp_path / "out"))
    assert "model.safetensors" in err and "corrupt" in err


def test_existing_output_and_offline_hub_id(qwen_folder, tmp_path, capsys, monkeypatch):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    for overwrite in ([], ["--overwrite"]):  # a folder that is not a run: never replaced
        err = convert_error(capsys, "from-hf", str(qwen_folder), str(taken), *overwrite)
        assert "is not a run directory" in err
        assert [p.name for p in taken.iterdir()] == ["notes.txt"]
    run = tmp_path / "run"
    assert main(["convert", "from-hf", str(qwen_folder), str(run)]) == 0
    assert "already exists" in convert_error(capsys, "from-hf", str(qwen_folder), str(run))
    assert main(["convert", "from-hf", str(qwen_folder), str(run), "--overwrite"]) == 0
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    new = tmp_path / "new"
    assert "HF_HUB_OFFLINE" in convert_error(capsys, "from-hf", "Qwen/Qwen3-0.6B", str(new))
    assert not new.exists()


def test_a_hub_id_without_an_org_is_tried_and_offline_reads_only_the_cache(
        tmp_path, capsys, monkeypatch):
    """`convert from-hf gpt2 runs/gpt2`, the book's chapter 5 step: with HF_HUB_OFFLINE set,
    one error line without touching the network, until the model is in the hub's cache."""
    import socket

    import huggingface_hub.constants

    def no_network(*args, **kwargs):
        raise AssertionError("the network was tried")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    out = tmp_path / "runs" / "gpt2"
    err = convert_error(capsys, "from-hf", "gpt2", str(out))
    assert err.startswith("error: gpt2 is not a local folder nor in the Hugging Face cache")
    assert "HF_HUB_OFFLINE" in err and not out.exists()
    for name in ("./no/such/folder", "a/b/c", "bad--name", str(tmp_path / "missing")):
        assert "neither a folder nor a hub id" in convert_error(capsys, "from-hf", name, str(out))
    (tmp_path / "weights.bin").write_bytes(b"")
    assert "is a file" in convert_error(capsys, "from-hf", str(tmp_path / "weights.bin"),
                                        str(out))
    # Where a download leaves it: models--gpt2/snapshots/<commit>, named by refs/main.
    commit = "0123456789abcdef0123456789abcdef01234567"
    save_folder(hf_model("gpt2"), "gpt2", cache / "models--gpt2" / "snapshots" / commit)
    (cache / "models--gpt2" / "refs").mkdir()
    (cache / "models--gpt2" / "refs" / "main").write_text(commit)
    assert main(["convert", "from-hf", "gpt2", str(out)]) == 0
    assert Run(out).read_info().source == "gpt2"


def test_export_refuses_an_architecture_without_hf_equivalent():
    with pytest.raises(LLMScratchError, match="qk_norm=True") as err:
        family_of(get_preset("gpt2-tiny", qk_norm=True))  # GPT-2 with QK-norm: no HF class
    assert "\n" not in str(err.value)
    with pytest.raises(LLMScratchError, match="attn_sinks=True"):
        family_of(get_preset("gemma3-tiny", attn_sinks=True))  # only gpt-oss has sinks


def test_an_imported_run_keeps_only_its_model_and_the_sources_generation_settings(
        qwen_folder, tmp_path, capsys):
    """Nothing of pretraining (sample prompts for plays) in its config; stop ids and the chat
    template come from the Hugging Face folder, and generation stops at those ids."""
    run_dir = tmp_path / "run"
    assert main(["convert", "from-hf", str(qwen_folder), str(run_dir)]) == 0
    capsys.readouterr()
    prompt = ["generate", "--run", str(run_dir), "--prompt", "First Citizen:",
              "--temperature", "0", "--max-new-tokens", "8", "--json"]
    assert main(prompt) == 0
    first = json.loads(capsys.readouterr().out)["token_ids"][0]  # greedy: always this one

    (qwen_folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [first, 7]}))
    template = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
                "<|im_end|>\n{% endfor %}")
    (qwen_folder / "tokenizer_config.json").write_text(json.dumps({
        "chat_template": template, "bos_token": None,
        "eos_token": {"content": "<|im_end|>", "special": True}}))
    assert main(["convert", "from-hf", str(qwen_folder), str(run_dir), "--overwrite"]) == 0
    run = Run(run_dir)
    assert list(yaml.safe_load(run.config_path.read_text())) == ["model"]
    settings = run.generation_settings()
    assert settings.stop_token_ids == [first, 7] and settings.chat_template == template
    assert (settings.bos_token, settings.eos_token) == ("", "<|im_end|>")
    capsys.readouterr()
    assert main(prompt) == 0
    assert json.loads(capsys.readouterr().out)["token_ids"] == []  # stopped at once
