"""Recipes: the layers below wired together for one job.

    pretrain.py        text -> tokenizer -> trained model -> report (`llmscratch pretrain`)
    pretrain_data.py   the tokens a pretraining run reads: text, or prepared shards
    budget.py          train.budget_seconds: a run sized to the time this machine has
    report.py          report.md and samples.md
    demo.py            `llmscratch demo`: configs/demo.yaml, with a model that fits the machine
"""
