"""Runs: the one owner of a run directory's layout (runs/run.py has the map).

    run.py          Run: the layout, create (never over what is not a run), open, lock
    config.py       RunConfig: the model, data and train sections of config.yaml
    checkpoint.py   checkpoints: written atomically, verified against their manifest
    sharded.py      FSDP checkpoints through torch.distributed.checkpoint, read safely
    metrics.py      metrics.jsonl
    load.py         a run's newest model for inference (a base run's weights merged in)
    hf_import.py    a Hugging Face folder as a run (`convert from-hf`)
    hf_export.py    a run as a Hugging Face folder, or one safetensors file
"""
