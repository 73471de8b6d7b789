"""llmscratch: build a large language model from scratch.

The package follows the pipeline, one folder a stage:

    tokenizer/   text -> token ids (byte-level BPE, trained here)
    data/        corpus cleaning, train/validation split, batches of tokens
    model/       the decoder-only transformer and its config
    training/    the training loop, optimizer, schedule, checkpoints, metrics
    generation/  sampling text from a trained model
    evaluation/  loss, perplexity and bits per byte on held-out text

`cli.py` is the one command-line entry point (`llmscratch --help`).
"""

__version__ = "0.1.0"
