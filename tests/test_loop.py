"""The loop's contract: sums and counts, divided once; metrics; the policy; trainable-only
checkpoints on a base run."""

import json

import pytest
import torch
import torch.nn.functional as F

from llmscratch.model import GPT, get_preset
from llmscratch.runs.checkpoint import TrainState, latest_checkpoint, read_weights
from llmscratch.runs.config import TrainConfig
from llmscratch.runs.load import load_model
from llmscratch.runs.run import BaseRun
from llmscratch.training.loop import Trainer
from llmscratch.training.objectives import NextTokenPrediction
from llmscratch.training.optim import Schedule
from tests.conftest import new_run

CPU = torch.device("cpu")


class Batches:
    """A batch source that hands out the given batches in turn (and records the policy)."""

    def __init__(self, batches):
        self.batches, self.position, self.policies = list(batches), 0, []

    def next_batch(self, policy=None):
        self.policies.append(policy)
        batch = self.batches[self.position % len(self.batches)]
        self.position += 1
        return batch

    def state_dict(self):
        return {"position": self.position}


def masked_batches():
    """Two micro-batches of 2 sequences whose targets mask very different numbers of tokens."""
    torch.manual_seed(0)
    ids = torch.randint(0, 512, (4, 17))
    inputs, targets = ids[:, :-1], ids[:, 1:].clone()
    targets[0, :14] = -100  # the first micro-batch trains on 2 + 1 tokens,
    targets[1, :15] = -100
    targets[3, :4] = -100  # the second on 16 + 12
    return (inputs[:2], targets[:2]), (inputs[2:], targets[2:])


def sgd_trainer(model, batches, grad_accum, run):
    """One plain SGD step of lr 0.1 (no clipping): the update is -0.1 x the gradient."""
    optimizer = torch.optim.SGD([{"params": list(model.parameters()), "initial_lr": 0.1}],
                                lr=0.1)
    cfg = TrainConfig(max_steps=1, grad_accum=grad_accum, grad_clip=0.0, dtype="fp32")
    return Trainer(model, NextTokenPrediction(CPU), Batches(batches), optimizer,
                   Schedule(peak_lr=0.1, warmup_steps=0), cfg, run, CPU)


def test_two_micro_batches_step_like_one_batch_of_both_with_the_mean_over_tokens(tmp_path):
    """The gradient is the mean over every predicted token of the step, however the
    batch is split; a mean of per-micro-batch means, or no division, would not be."""
    first, second = masked_batches()
    both = (torch.cat([first[0], second[0]]), torch.cat([first[1], second[1]]))
    torch.manual_seed(1)
    start = GPT(get_preset("gpt2-tiny")).state_dict()

    # The reference, by hand: -0.1 x the gradient of the mean cross-entropy over all tokens.
    reference = GPT(get_preset("gpt2-tiny"))
    reference.load_state_dict(start)
    loss = F.cross_entropy(reference.logits(reference(both[0])).flatten(0, 1),
                           both[1].flatten(), ignore_index=-100)
    loss.backward()
    expected = {n: p.detach() - 0.1 * p.grad for n, p in reference.named_parameters()}

    run = new_run(tmp_path / "run")
    for batches, grad_accum in (([first, second], 2), ([both], 1)):
        model = GPT(get_preset("gpt2-tiny"))
        model.load_state_dict(start)
        out = sgd_trainer(model, batches, grad_accum, run).train_step(TrainState())
        assert out["loss"] == pytest.approx(loss.item(), rel=1e-6)
        for name, param in model.named_parameters():
            torch.testing.assert_close(param.detach(), expected[name], atol=1e-6, rtol=1e-5)
    # The masks make the split matter: a mean of the micro-batches' means (each of the 3
    # tokens of the first weighing 9 times one of the second) steps elsewhere.
    reference.zero_grad()
    mean_of_means = sum(F.cross_entropy(reference.logits(reference(x)).flatten(0, 1),
                                        y.flatten(), ignore_index=-100) for x, y in
                        (first, second)) / 2
    mean_of_means.backward()
    wrong = reference.tok_emb.weight.detach() - 0.1 * reference.tok_emb.weight.grad
    assert not torch.allclose(wrong, expected["tok_emb.weight"], atol=1e-4)


class WithAccuracy(NextTokenPrediction):
    """Next-token prediction that also reports how often the most likely token is right."""

    def __call__(self, model, batch):
        out = super().__call__(model, batch)
        inputs, targets = batch
        with torch.no_grad():
            predicted = model.logits(model(inputs)).argmax(-1)
        real = targets != -100
        out.metrics["accuracy"] = (float(((predicted == targets) & real).sum()),
                                   float(real.sum()))
        return out


def test_objective_metrics_reach_metrics_jsonl_as_sums_over_counts(tmp_path):
    first, second = masked_batches()
    torch.manual_seed(1)
    model = GPT(get_preset("gpt2-tiny"))
    run = new_run(tmp_path / "run")
    # Accuracy by hand, before the step changes the weights:
    right = total = 0
    with torch.no_grad():
        for inputs, targets in (first, second):
            real = targets != -100
            right += int(((model.logits(model(inputs)).argmax(-1) == targets) & real).sum())
            total += int(real.sum())
    optimizer = torch.optim.SGD([{"params": list(model.parameters()), "initial_lr": 0.0}],
                                lr=0.0)
    trainer = Trainer(model, WithAccuracy(CPU), Batches([first, second]), optimizer,
                      Schedule(peak_lr=0.0, warmup_steps=0),
                      TrainConfig(max_steps=1, grad_accum=2, log_every=1, dtype="fp32"), run, CPU)
    trainer.fit(TrainState())
    record = next(json.loads(line) for line in run.metrics.path.read_text().splitlines()
                  if "accuracy" in json.loads(line))
    assert record["accuracy"] == pytest.approx(right / total)
    assert record["tokens"] == 4 * 16  # tokens read, masked or not


def test_the_data_source_sees_the_current_policy(tmp_path):
    first, _ = masked_batches()
    model = GPT(get_preset("gpt2-tiny"))
    seen = []

    class Watching(Batches):
        def next_batch(self, policy=None):
            seen.append(policy.lm_head.weight.detach().clone())  # what a rollout would use
            return super().next_batch(policy)

    source = Watching([first])
    optimizer = torch.optim.SGD([{"params": list(model.parameters()), "initial_lr": 0.1}],
                                lr=0.1)
    Trainer(model, NextTokenPrediction(CPU), source, optimizer,
            Schedule(peak_lr=0.1, warmup_steps=0),
            TrainConfig(max_steps=2, log_every=1, dtype="fp32"), new_run(tmp_path / "run"),
            CPU).fit(TrainState())
    assert all(policy is model for policy in source.policies)
    assert not torch.equal(seen[0], seen[1])  # the second batch saw the updated weights


def test_trainable_only_checkpoints_load_on_their_base_run(tmp_path, tiny_run):
    """A run that trains the last block and the final norm saves only those, and names its
    base: loading it gives the trained model, the rest from the base run."""
    from llmscratch.runs.run import Run

    base = Run(tiny_run)
    base_ckpt = latest_checkpoint(base)
    model = load_model(base)
    config = base.read_config()
    for name, param in model.named_parameters():
        param.requires_grad = name.startswith(("blocks.1.", "ln_f."))
    run = new_run(tmp_path / "tuned", base=BaseRun(str(base.path.resolve()), base_ckpt.name))
    run.save_config(config)
    first, _ = masked_batches()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for group in optimizer.param_groups:
        group["initial_lr"] = 1e-2
    Trainer(model.train(), NextTokenPrediction(CPU), Batches([first]), optimizer,
            Schedule(peak_lr=1e-2, warmup_steps=0),
            TrainConfig(max_steps=3, dtype="fp32"), run, CPU, trainable_only=True).fit(TrainState())

    saved = read_weights(latest_checkpoint(run))
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(saved) == trained  # nothing frozen is stored
    loaded = load_model(run)
    untouched = load_model(base)
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, model.state_dict()[name]), name
        if name not in trained:
            assert torch.equal(tensor, untouched.state_dict()[name]), name
    assert not torch.equal(loaded.ln_f.weight, untouched.ln_f.weight)  # it did train


def test_cpu_training_keeps_freed_memory_where_malloc_is_glibc():
    """mallopt takes both thresholds (it returns 0 for a parameter or value it refuses)."""
    import platform

    from llmscratch.training.allocator import keep_freed_memory

    glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert keep_freed_memory() == glibc


def losses_of_steps(device: torch.device, dtype: str, run, steps: int = 8) -> list[float]:
    """The losses of `steps` of Trainer.train_step on one fixed batch, from the same start."""
    from llmscratch.training.optim import build_optimizer

    torch.manual_seed(0)
    model = GPT(get_preset("gpt2-tiny")).to(device)
    ids = torch.randint(0, 512, (4, 33), generator=torch.Generator().manual_seed(0)).to(device)
    cfg = TrainConfig(max_steps=steps, lr=3e-3, warmup_steps=0, dtype=dtype,
                      device=device.type)
    trainer = Trainer(model, NextTokenPrediction(device), Batches([(ids[:, :-1], ids[:, 1:])]),
                      build_optimizer(model, cfg), Schedule.from_train(cfg), cfg, run, device)
    state = TrainState()
    return [trainer.train_step(state)["loss"] for _ in range(steps)]


@pytest.mark.cuda
def test_bf16_autocast_training_on_cuda_follows_fp32_on_the_cpu(tmp_path):
    """A few optimizer steps in bf16 autocast on the GPU track the CPU's fp32 losses."""
    cpu = losses_of_steps(CPU, "fp32", new_run(tmp_path / "cpu"))
    gpu = losses_of_steps(torch.device("cuda"), "bf16", new_run(tmp_path / "gpu"))
    assert gpu[-1] < 0.9 * gpu[0]  # it learns the batch
    assert gpu == pytest.approx(cpu, rel=1e-2)
