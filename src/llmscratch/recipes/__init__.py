"""Recipes: the layers below wired together for one job.

    pretrain.py        text -> tokenizer -> trained model -> report (`llmscratch pretrain`)
    pretrain_data.py   the tokens a pretraining run reads: text, or prepared shards
    budget.py          train.budget_seconds: a run sized to the time this machine has
    report.py          report.md and samples.md
    demo.py            `llmscratch demo`: configs/demo.yaml, with a model that fits the machine
    processes.py       one process or many (torchrun): the device, the process group
    finetune.py        a base run -> an adapted run (`llmscratch finetune`), for every method
    classify.py        the classification method: labeled texts, a class head, test scores
    sft.py             the instruction-tuning method: prompts masked, exact match held out
    adapters.py        LoRA runs: merge into a full run, export and import PEFT adapters
"""
