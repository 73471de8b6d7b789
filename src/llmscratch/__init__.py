"""llmscratch: build a large language model from scratch.

The package follows the pipeline, one folder a stage; each imports only from
those above it (tests/test_architecture.py checks it; docs/architecture.md
draws the map):

    errors.py, io.py, config.py, distributed.py   what every stage needs, written once
    tokenizer/    text -> token ids (byte-level BPE, trained here)
    data/         corpus cleaning, token shards, batches of token windows
    model/        the decoder-only transformer (nn only) and its heads
    runs/         the one owner of a run directory: create, checkpoints, load, HF in/out
    training/     the one training loop, objectives, optimizers, parallelism
    generation/   sampling text from a model
    evaluation/   loss, perplexity and bits per byte on held-out text
    recipes/      the stages wired together for one job: pretraining, the demo
    cli/          the `llmscratch` command (`llmscratch --help`)
"""

__version__ = "0.1.0"
