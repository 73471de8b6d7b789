"""Prepared data: shards and manifest from text, the memory-mapped loader, bad input."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from llmscratch.cli import main
from llmscratch.data.documents import iter_pieces
from llmscratch.data.loader import TokenWindows
from llmscratch.data.manifest import read_manifest
from llmscratch.data.prepare import PrepareConfig, prepare
from llmscratch.errors import LLMScratchError
from llmscratch.io import sha256_file
from llmscratch.tokenizer import train_bpe
from tests.conftest import TINY_CONFIG

DOCS = [f"Document {i}: " + "to be or not to be, " * (i % 7 + 1) + "that is the question.\n"
        for i in range(60)]


@pytest.fixture(scope="module")
def sources(tmp_path_factory, small_text):
    """The same 60 documents as .jsonl and .parquet, a tokenizer, and a .txt file."""
    root = tmp_path_factory.mktemp("sources")
    with (root / "docs.jsonl").open("w") as f:
        for doc in DOCS:
            f.write(json.dumps({"body": doc}) + "\n")

    pq.write_table(pa.table({"body": DOCS}), root / "docs.parquet")
    tokenizer = train_bpe([small_text.read_text()], vocab_size=512)
    tokenizer.save(root / "tok")
    return root, tokenizer


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, small_text, sources):
    root, _ = sources
    out = tmp_path_factory.mktemp("prepared") / "data"
    prepare(PrepareConfig(data=[str(small_text)], tokenizer=str(root / "tok"), out=str(out),
                          val_fraction=0.1, workers=1, chunk_bytes=20_000))
    return out


def read_split(directory, split):
    manifest = read_manifest(directory)
    return np.concatenate(manifest.shards(split)) if manifest.shards(split) else np.zeros(0)


def test_jsonl_and_parquet_give_every_document_then_endoftext(sources, tmp_path):
    root, tokenizer = sources
    expected = [i for doc in DOCS for i in tokenizer.encode(doc) + [tokenizer.eot_id]]
    for name in ("docs.jsonl", "docs.parquet"):
        out = tmp_path / name
        manifest = prepare(PrepareConfig(data=[str(root / name)], tokenizer=str(root / "tok"),
                                         out=str(out), text_field="body", val_fraction=0.0,
                                         workers=1, shard_tokens=1000))
        assert manifest["dtype"] == "uint16" and manifest["documents"] == len(DOCS)
        assert manifest["tokenizer"]["vocab_size"] == tokenizer.vocab_size
        shards = manifest["splits"]["train"]["shards"]
        assert len(shards) == -(-len(expected) // 1000)  # full shards of 1000, then the rest
        assert all(sha256_file(out / s["name"]) == s["sha256"] for s in shards)
        assert read_split(out, "train").tolist() == expected
        assert manifest["splits"]["train"]["bytes"] == sum(len(d.encode()) for d in DOCS)


def test_txt_split_and_several_processes_give_the_same_shards(prepared, small_text, sources,
                                                              tmp_path):
    root, tokenizer = sources
    train, val = read_split(prepared, "train"), read_split(prepared, "val")
    whole = tokenizer.encode(small_text.read_text()) + [tokenizer.eot_id]
    assert sorted(train.tolist() + val.tolist()) == sorted(whole)  # nothing lost, nothing added
    assert 0.08 < len(val) / len(whole) < 0.12
    # Block-wise reading of .txt gives the ids of the whole file.
    pieces = list(iter_pieces(small_text))
    assert [i for p in pieces for i in tokenizer.encode(p.text)] == whole[:-1]
    out = tmp_path / "two"
    prepare(PrepareConfig(data=[str(small_text)], tokenizer=str(root / "tok"), out=str(out),
                          val_fraction=0.1, workers=2, chunk_bytes=20_000))
    for split in ("train", "val"):
        assert np.array_equal(read_split(out, split), read_split(prepared, split))


def test_loader_ranks_are_disjoint_and_add_up_to_one_process():
    arrays = [np.arange(0, 500), np.arange(1000, 1300), np.arange(5000, 5011)]
    single = TokenWindows(arrays, seq_len=10, batch_size=6, seed=1)
    ranks = [TokenWindows(arrays, seq_len=10, batch_size=3, seed=1, rank=r, world_size=2)
             for r in range(2)]
    assert single.windows_per_epoch == 48 + 28  # (n - 11) // 10; the 11-token array: none
    for index in range(30):  # more than one epoch
        inputs, targets = single.batch(index)
        parts = [r.batch(index)[0] for r in ranks]
        assert torch.equal(torch.cat(parts), inputs)
        assert not set(parts[0][:, 0].tolist()) & set(parts[1][:, 0].tolist())
        assert torch.equal(inputs[:, 1:], targets[:, :-1])
        assert all(int(row[-1]) - int(row[0]) == 9 for row in inputs)  # never across arrays


def test_loader_state_resumes_the_same_batches():
    arrays = [np.arange(3000)]
    loader = TokenWindows(arrays, seq_len=16, batch_size=4, seed=7)
    for _ in range(5):
        loader.next_batch()
    state = json.loads(json.dumps(loader.state_dict()))  # as saved in state.json
    expected = [loader.next_batch()[0] for _ in range(3)]
    resumed = TokenWindows(arrays, seq_len=16, batch_size=4, seed=7)
    resumed.load_state_dict(state)
    assert all(torch.equal(a, resumed.next_batch()[0]) for a in expected)
    with pytest.raises(LLMScratchError, match="seed was 7, now 8"):
        TokenWindows(arrays, seq_len=16, batch_size=4, seed=8).load_state_dict(state)


def test_pretrain_on_prepared_data_and_resume(prepared, tmp_path, capsys):
    args = ["--config", TINY_CONFIG, f"data.prepared={prepared}", "train.max_steps=6",
            "train.checkpoint_every=3", "train.eval_every=3", "train.sample_every=0",
            "train.prompts=[]"]
    assert main(["pretrain", *args, "--out", str(tmp_path / "run")]) == 0
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert any("final_val_bpb" in r for r in records)
    state = json.loads((tmp_path / "run/checkpoints/step-00000006/state.json").read_text())
    assert state["data"]["position"] == 6 and state["data"]["global_batch"] == 4
    assert main(["pretrain", "--resume", str(tmp_path / "run"), "train.max_steps=8"]) == 0
    printed = capsys.readouterr()
    assert "resuming from step-00000006" in printed.out
    # Not a terminal: the progress is whole lines (llmscratch/progress.py), no "\r" redraws.
    assert "\r" not in printed.err and "8/8 step (100%)" in printed.err


def test_data_cli_prepare_and_inspect(sources, small_text, tmp_path, capsys):
    root, _ = sources
    out = tmp_path / "cli"
    assert main(["data", "prepare", "--data", str(small_text), "--tokenizer", str(root / "tok"),
                 "--out", str(out), "--workers", "1", "--json"]) == 0
    printed = capsys.readouterr()
    manifest = json.loads(printed.out)
    assert "\r" not in printed.err and "(100%)" in printed.err  # plain progress lines
    assert manifest["splits"]["val"]["tokens"] > 0
    assert main(["data", "inspect", str(out)]) == 0
    assert "train:" in capsys.readouterr().out


def _corrupt_copy(prepared, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(prepared, bad)
    shard = bad / "train-00000.bin"
    data = bytearray(shard.read_bytes())
    data[100] ^= 1
    shard.write_bytes(bytes(data))
    return bad


BAD = [
    (["data", "inspect", "{tmp}"], "has no manifest.json"),
    (["data", "inspect", "{bad}"], "does not match its SHA-256"),
    (["pretrain", "--config", TINY_CONFIG, "--out", "{tmp}/o", "data.prepared={tmp}"],
     "has no manifest.json"),
    (["pretrain", "--config", TINY_CONFIG, "--out", "{tmp}/o", "data.prepared={prepared}",
      "model.vocab_size=256"], "set model.vocab_size >= 512"),
    (["pretrain", "--config", TINY_CONFIG, "--out", "{tmp}/o", "data.prepared={prepared}",
      "data.tokenizer=gpt2"], "(hash mismatch)"),
    (["pretrain", "--config", TINY_CONFIG, "--out", "{tmp}/o", "data.prepared={prepared}",
      "train.global_batch=6"], "is not a multiple of train.batch_size"),
    (["data", "prepare", "--data", "{tmp}/missing.txt", "--tokenizer", "gpt2", "--out",
      "{tmp}/p"], "data file not found"),
]


@pytest.mark.parametrize("argv, message", BAD, ids=[m for _, m in BAD])
def test_bad_data_gives_one_line(argv, message, prepared, tmp_path, capsys):
    bad = _corrupt_copy(prepared, tmp_path) if "{bad}" in argv else None
    argv = [a.format(tmp=tmp_path, bad=bad, prepared=prepared) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


def test_prepare_help_comes_from_the_config_fields(capsys):
    assert main(["data", "prepare", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--text-field" in out and "field (.jsonl) or column (.parquet)" in out
    assert "examples:" in out
