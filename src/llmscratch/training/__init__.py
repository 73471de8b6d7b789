"""Training: the one loop, and what it needs from outside the model.

    loop.py         Trainer: micro-batches, one division by the unit count, clipping,
                    the optimizer step, metrics, validation, checkpoints, callbacks
    objectives.py   what the loop minimises: a sum of per-unit losses and its count
    optim.py        AdamW or Muon, and the learning-rate schedules
    muon.py         the Muon optimizer
    precision.py    train.dtype: bf16 autocast or fp32
    parallel.py     activation checkpointing, DDP, FSDP2, torch.compile
    throughput.py   MFU, memory, and timing a step
    plots.py        the loss and training plots
"""
