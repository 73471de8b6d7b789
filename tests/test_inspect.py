"""`llmscratch inspect`: parameter counts, FLOPs and memory, checked against real tensors."""

import json

import pytest
import torch
from safetensors import safe_open

from llmscratch.cli import main
from llmscratch.model import GPT, get_preset
from tests.hf_tiny import hf_model, save_folder


def inspect_json(capsys, *args: str) -> dict:
    assert main(["inspect", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def tensor_bytes(*files) -> int:
    total = 0
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                tensor = f.get_tensor(name)
                total += tensor.numel() * tensor.element_size()
    return total


def test_moe_preset_reports_total_and_active(capsys):
    report = inspect_json(capsys, "qwen3-30b-a3b", "--seq", "4096", "--batch", "2")
    params = report["parameters"]
    assert params["total"] == 30_532_122_624 and params["active"] == 3_353_032_704
    assert params["embedding"] + params["non_embedding"] == params["total"]
    assert report["dtype"] == "bf16" and report["seq"] == 4096
    memory = report["memory_bytes"]
    assert memory["weights"] == 2 * params["total"]
    # 48 layers x 2 (k and v) x 2 sequences x 4096 tokens x 4 kv heads x 128 x 2 bytes
    assert memory["kv_cache"] == 48 * 2 * 2 * 4096 * 4 * 128 * 2
    assert report["flops_per_token"]["training"] == 3 * report["flops_per_token"]["inference"]


def test_gpt2_flops_follow_6n_plus_12ltd(capsys):
    report = inspect_json(capsys, "gpt2")
    with torch.device("meta"):
        model = GPT(get_preset("gpt2"))
    n_matmul = model.num_params() - model.pos_emb.weight.numel()  # lookups cost no FLOPs
    assert report["flops_per_token"]["training"] == 6 * n_matmul + 12 * 12 * 1024 * 768


def test_local_layers_read_only_their_window(capsys):
    """Gemma 3 1B at 32k tokens: 22 local layers read 512 keys, 4 global ones all 32,768."""
    report = inspect_json(capsys, "gemma-3-1b")
    with torch.device("meta"):
        model = GPT(get_preset("gemma-3-1b"))
    n_matmul = model.num_params()  # tied: the embedding matrix is used once, as the output layer
    keys = 22 * 512 + 4 * 32768
    assert report["flops_per_token"]["inference"] == 2 * n_matmul + 4 * keys * 4 * 256
    assert "5 local layers (window 512) to 1 global" in report["architecture"]


def test_latent_attention_caches_its_latent_and_reads_keys_of_its_head_widths(capsys):
    """DeepSeek V3: the cache holds 512 + 64 numbers per token and layer; each of 128 heads
    scores keys of 128 + 64 features and sums values of 128."""
    report = inspect_json(capsys, "deepseek-v3", "--seq", "4096")
    with torch.device("meta"):
        model = GPT(get_preset("deepseek-v3"))
    n_matmul = model.num_params(active=True) - model.tok_emb.weight.numel()
    attention = 2 * 61 * 4096 * 128 * (192 + 128)
    assert report["flops_per_token"]["inference"] == 2 * n_matmul + attention
    assert report["kv_cache_bytes_per_token"] == 61 * (512 + 64) * 2
    assert "latent attention (latent 512, RoPE key 64" in report["architecture"]


def test_weight_estimate_matches_real_tensors(capsys, tmp_path):
    hf_dir = save_folder(hf_model("qwen3_moe"), "qwen3_moe", tmp_path / "hf")
    run = tmp_path / "run"
    assert main(["convert", "from-hf", str(hf_dir), str(run), "--dtype", "bf16"]) == 0
    capsys.readouterr()
    checkpoint = run / "checkpoints" / "step-00000000" / "model.safetensors"
    estimate = inspect_json(capsys, str(run))["memory_bytes"]["weights"]
    assert estimate == pytest.approx(tensor_bytes(checkpoint), rel=0.01)
    estimate = inspect_json(capsys, str(hf_dir))["memory_bytes"]["weights"]  # fp32 folder
    assert estimate == pytest.approx(tensor_bytes(hf_dir / "model.safetensors"), rel=0.01)


def test_text_report_and_bad_input(capsys):
    assert main(["inspect", "llama-3.2-1b", "--seq", "2048"]) == 0
    text = capsys.readouterr().out
    for word in ("parameters", "non-embedding", "FLOPs per token", "kv cache", "training total"):
        assert word in text
    assert "1,235,814,400" in text
    for args in (["no-such-model"], ["gpt2", "--dtype", "fp8"], ["gpt2", "--batch", "0"]):
        assert main(["inspect", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err


def test_gpt_oss_reports_its_active_experts_window_and_cache(capsys):
    """gpt-oss-20b at 8k tokens: 4 of 32 biased experts active; 12 local layers read 128 keys,
    12 global ones all 8,192; the sinks add nothing to the cache (8 kv heads of 64)."""
    report = inspect_json(capsys, "gpt-oss-20b", "--seq", "8192")
    params = report["parameters"]
    expert = 3 * 2880 * 2880 + 3 * 2880  # gate, up, proj and their biases
    assert params["total"] - params["active"] == 24 * 28 * expert
    n_matmul = params["active"] - 201088 * 2880  # untied: the embedding lookup is free
    # OpenAI's model card: 20.91B in all, 3.61B active (counted without the embedding table).
    assert round(params["total"] / 1e7) == 2091 and round(n_matmul / 1e7) == 361
    keys = 12 * 128 + 12 * 8192
    assert report["flops_per_token"]["inference"] == 2 * n_matmul + 4 * keys * 64 * 64
    assert report["memory_bytes"]["kv_cache"] == 24 * 2 * 8192 * 8 * 64 * 2
    assert "with sinks" in report["architecture"]
    assert "clamped SwiGLU (limit 7)" in report["architecture"]
    assert "local (window 128) and global layers alternating" in report["architecture"]
