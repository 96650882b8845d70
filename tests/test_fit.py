"""The one fit of every trainer (planlm.train.trainer.fit: a stale validation is run again), the one multi-token
loss of every training step (planlm.train.multi_token) and the one Adam of every stage (planlm.train.trainer.adam)."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from helpers import VOCAB, random_lm
from torch.utils.data import DataLoader

from planlm.models.mtp import MTPHeads
from planlm.train.multi_token import multi_token_loss
from planlm.train.trainer import TrainerConfig, ValidatedAt, adam, build_trainer, fit

QUIET = TrainerConfig(accelerator="cpu", progress_bar=False, logger="none")


class Counting(L.LightningModule):
    """A linear model on 4 train batches per epoch that counts its validations."""

    def __init__(self, val: bool = True):
        super().__init__()
        self.layer, self.val, self.validations = torch.nn.Linear(2, 1), val, 0
        g = torch.Generator().manual_seed(0)
        self.x, self.v = torch.randn(8, 2, generator=g), torch.randn(4, 2, generator=g)

    def training_step(self, batch, batch_idx):
        loss = self.layer(batch).pow(2).mean()
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self.layer(batch).pow(2).mean())

    def on_validation_epoch_end(self):
        self.validations += 1

    def train_dataloader(self):
        return DataLoader(self.x, batch_size=2)

    def val_dataloader(self):
        return DataLoader(self.v, batch_size=2) if self.val else []

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _trainer(tmp_path, **kwargs):
    return build_trainer(QUIET, tmp_path, num_sanity_val_steps=0, enable_checkpointing=False, **kwargs)


def test_every_trainer_has_one_validated_at(tmp_path):
    assert sum(isinstance(c, ValidatedAt) for c in _trainer(tmp_path, max_steps=1).callbacks) == 1
    own = ValidatedAt()
    trainer = _trainer(tmp_path, max_steps=1, callbacks=[own])
    assert [c for c in trainer.callbacks if isinstance(c, ValidatedAt)] == [own]


@pytest.mark.parametrize("max_steps, epochs, validations", [(3, 1, 1), (4, 1, 1), (6, 2, 2), (8, 2, 2)])
def test_fit_validates_again_only_when_the_last_validation_is_stale(tmp_path, max_steps, epochs, validations):
    module = Counting()
    trainer = _trainer(tmp_path, max_steps=max_steps, max_epochs=epochs)
    metrics = fit(trainer, module)
    # 4 batches an epoch: an epoch's end validates; max_steps mid-epoch (3, 6) leaves the last one stale (none yet,
    # or epoch 1's), and fit runs one more; at an epoch's end (4, 8) the last one is the final model's
    assert trainer.global_step == max_steps and module.validations == validations
    with torch.no_grad():
        final = module.layer(module.v).pow(2).mean().item()  # the returned val/loss is the final model's
    assert metrics["val/loss"] == pytest.approx(final, rel=1e-6)
    assert set(metrics) == {"train/loss", "val/loss"} and all(isinstance(v, float) for v in metrics.values())


def test_fit_without_validation_data_does_not_validate(tmp_path):
    module = Counting(val=False)
    metrics = fit(_trainer(tmp_path, max_steps=3), module)
    assert module.validations == 0 and set(metrics) == {"train/loss"}


@pytest.mark.parametrize("backward", ["naive", "sequential"])
def test_multi_token_loss_returns_the_objective_and_the_backward_of_its_mode(backward):
    lm = random_lm("gpt2", n_layer=3).eval()  # no dropout: both modes see the same computation
    heads = MTPHeads(lm, 3)
    ids = torch.randint(0, VOCAB, (2, 10), generator=torch.Generator().manual_seed(0))
    run = lambda: lm(input_ids=ids, use_cache=False).logits

    def step(mode, train):
        lm.zero_grad(set_to_none=True), heads.zero_grad(set_to_none=True)
        out = multi_token_loss(heads, run, ids, mode, train=train)
        if train:
            out.backward.backward()
        grads = {n: p.grad.clone() for n, p in [*lm.named_parameters(), *heads.named_parameters()] if p.grad is not None}
        return out, grads

    ref, ref_grads = step("naive", True)
    got, grads = step(backward, True)
    assert got.objective.item() == pytest.approx(ref.objective.item(), rel=1e-6)
    assert got.lm_loss.item() == pytest.approx(lm(input_ids=ids, labels=ids).loss.item(), rel=1e-5)
    if backward == "sequential":
        assert not got.objective.requires_grad and got.backward is not got.objective  # the surrogate
    else:
        assert got.backward is got.objective
    assert grads.keys() == ref_grads.keys() and grads
    for k in grads:
        torch.testing.assert_close(grads[k], ref_grads[k], rtol=1e-4, atol=1e-6)
    with torch.no_grad():  # validation: computed naively whatever the configured backward
        val, _ = step(backward, False)
    assert val.backward is val.objective and val.objective.item() == pytest.approx(ref.objective.item(), rel=1e-6)


def test_the_step_timer_sums_step_seconds_on_the_cpu():
    import time

    import torch

    from planlm.train.trainer import StepTimer

    t, cpu = StepTimer(), torch.device("cpu")
    wall = time.perf_counter()
    for _ in range(3):
        t.start(cpu)
        time.sleep(0.01)
        t.stop(cpu)
        time.sleep(0.02)  # between steps: not counted
    wall = time.perf_counter() - wall
    assert 0.03 <= t.seconds <= wall - 0.06  # the steps, and none of the time between them


def _stepped(make, steps: int = 3) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    params = [torch.randn(5, 3, generator=g).requires_grad_(), torch.randn(3, generator=g).requires_grad_()]
    groups = [{"params": params[:1]}, {"params": params[1:], "lr": 0.05, "weight_decay": 0.0}]
    opt = make(groups)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()
    return [p.detach() for p in params], opt


@pytest.mark.parametrize("decoupled", [False, True])
def test_adam_is_the_fused_kernel_with_the_same_update_as_torchs_loop(decoupled):
    kind = torch.optim.AdamW if decoupled else torch.optim.Adam
    ours, opt = _stepped(lambda groups: adam(groups, 0.01, weight_decay=0.1, decoupled=decoupled, betas=(0.9, 0.95)))
    loop, _ = _stepped(lambda groups: kind(groups, lr=0.01, weight_decay=0.1, betas=(0.9, 0.95), foreach=False))
    assert type(opt) is kind and opt.defaults["fused"]
    assert [g["lr"] for g in opt.param_groups] == [0.01, 0.05]
    for a, b in zip(ours, loop):
        torch.testing.assert_close(a, b)
    assert not torch.equal(ours[0], _stepped(lambda groups: kind(groups, lr=0.01), 0)[0][0])  # it did step


class _Trainer:
    def __init__(self, precision: str, gradient_clip_val):
        self.precision, self.gradient_clip_val = precision, gradient_clip_val


@pytest.mark.parametrize("precision, clip, fused", [("32-true", 1.0, True), ("bf16-mixed", None, True),
                                                    ("bf16-mixed", 1.0, False), ("16-mixed", 0.5, False)])
def test_adam_is_not_fused_where_lightning_clips_under_mixed_precision(precision, clip, fused):
    opt = adam([torch.zeros(2, requires_grad=True)], 1e-3, trainer=_Trainer(precision, clip))
    assert bool(opt.defaults["fused"]) is fused


def test_a_clipped_bf16_fit_steps_with_the_stages_adam(tmp_path):
    class Clipped(Counting):
        def configure_optimizers(self):
            return adam(self.parameters(), 0.1, trainer=self._trainer)

    module = Clipped(val=False)
    before = module.layer.weight.detach().clone()
    trainer = build_trainer(TrainerConfig(accelerator="cpu", progress_bar=False, logger="none", precision="bf16-mixed"),
                            tmp_path, num_sanity_val_steps=0, enable_checkpointing=False, max_steps=2,
                            gradient_clip_val=0.5)
    fit(trainer, module)
    assert trainer.global_step == 2 and not torch.equal(before, module.layer.weight)
