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
    """gpt-oss-20b at 8k tokens: 4 of 32 biased experts active; 12 local layers read (and
    keep) 128 keys, 12 global ones all 8,192; the sinks add nothing to the cache (8 kv heads
    of 64)."""
    report = inspect_json(capsys, "gpt-oss-20b", "--seq", "8192")
    params = report["parameters"]
    expert = 3 * 2880 * 2880 + 3 * 2880  # gate, up, proj and their biases
    assert params["total"] - params["active"] == 24 * 28 * expert
    n_matmul = params["active"] - 201088 * 2880  # untied: the embedding lookup is free
    # OpenAI's model card: 20.91B in all, 3.61B active (counted without the embedding table).
    assert round(params["total"] / 1e7) == 2091 and round(n_matmul / 1e7) == 361
    keys = 12 * 128 + 12 * 8192
    assert report["flops_per_token"]["inference"] == 2 * n_matmul + 4 * keys * 64 * 64
    assert report["memory_bytes"]["kv_cache"] == (12 * 8192 + 12 * 128) * 2 * 8 * 64 * 2
    assert "with sinks" in report["architecture"]
    assert "clamped SwiGLU (limit 7)" in report["architecture"]
    assert "local (window 128) and global layers alternating" in report["architecture"]


# --- KV-cache bytes per token, checked against hand computations --------------------------


@pytest.mark.parametrize("preset, per_token", [
    ("gpt2", 12 * 2 * 12 * 64 * 2),  # MHA: 12 layers x (k, v) x 12 heads x 64 x 2 bytes
    ("llama-3.1-8b", 32 * 2 * 8 * 128 * 2),  # GQA: 8 kv heads for 32 query heads
    ("deepseek-v3", 61 * (512 + 64) * 2),  # MLA: a latent of 512 and a RoPE key of 64
])
def test_kv_bytes_per_token_of_full_attention(capsys, preset, per_token):
    report = inspect_json(capsys, preset, "--seq", "1000", "--dtype", "bf16")
    assert report["kv_cache_bytes_per_token"] == per_token
    assert report["kv_cache"]["per_token_global"] == per_token  # no local layers
    assert report["memory_bytes"]["kv_cache"] == 1000 * per_token


def test_sliding_window_layers_keep_only_their_window(capsys):
    """Gemma 3 27B at its 128k context: 10 global layers keep every token, 52 local ones
    the last 1,024; 16 kv heads of 128, in bf16."""
    per_layer = 2 * 16 * 128 * 2
    report = inspect_json(capsys, "gemma-3-27b", "--batch", "2")
    kv = report["kv_cache"]
    assert (kv["per_token"], kv["per_token_global"]) == (62 * per_layer, 10 * per_layer)
    assert (kv["window"], kv["local_layers"]) == (1024, 52)
    assert report["memory_bytes"]["kv_cache"] == 2 * (131072 * 10 + 1024 * 52) * per_layer
    # Shorter than the window, every layer keeps every token.
    short = inspect_json(capsys, "gemma-3-27b", "--seq", "1000")
    assert short["memory_bytes"]["kv_cache"] == 1000 * 62 * per_layer


def test_gated_deltanet_state_is_the_same_at_any_length(capsys):
    """Qwen3-Next 80B: 12 attention layers (2 kv heads of 256) grow with the text; each of
    the 36 Gated DeltaNet layers keeps its convolution's last 3 inputs of 2 x 16 x 128 +
    32 x 128 channels (bf16) and 32 memories of 128 x 128 (fp32)."""
    state = 36 * ((2 * 16 * 128 + 32 * 128) * 3 * 2 + 32 * 128 * 128 * 4)
    for seq in (10, 100_000):
        report = inspect_json(capsys, "qwen3-next-80b-a3b", "--seq", str(seq))
        assert report["kv_cache"]["state_per_sequence"] == state  # 77,266,944: 73.7 MiB
        assert report["kv_cache_bytes_per_token"] == 12 * 2 * 2 * 256 * 2
        assert report["memory_bytes"]["kv_cache"] == seq * 12 * 2 * 2 * 256 * 2 + state


def test_text_report_shows_the_kv_cache_per_token_and_the_fixed_state(capsys):
    assert main(["inspect", "gemma-3-27b"]) == 0
    text = capsys.readouterr().out
    assert "kv cache per sequence (bf16)" in text
    assert "full                      507,904  bytes per token" in text
    assert ("sliding                    81,920  bytes per token in the 10 global layers, and the "
            "last 1,024 tokens in the 52 local ones: 416.00 MiB") in text
    assert main(["inspect", "qwen3-next-80b-a3b"]) == 0
    text = capsys.readouterr().out
    assert "per token                  24,576  bytes per token" in text
    assert ("state                  77,266,944  bytes, the same at any length, in the 36 Gated "
            "DeltaNet layers: 73.69 MiB") in text
    assert main(["inspect", "gpt2"]) == 0
    text = capsys.readouterr().out
    assert "kv cache per sequence (fp32)" in text and "73,728  bytes per token" in text
    assert "sliding" not in text and "state " not in text
