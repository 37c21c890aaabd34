"""Poly learning rate, by epoch and under a time budget (hand-computed values)."""
import pytest

from AutoSegLib.training.config import TrainingConfig


def test_poly_by_epoch():
    cfg = TrainingConfig(epochs=10, initial_lr=0.01)
    assert cfg.lr_at(0) == pytest.approx(0.01)
    assert cfg.lr_at(5) == pytest.approx(0.01 * 0.5 ** 0.9)
    assert cfg.lr_at(10) == 0.0


def test_budget_anneals_the_rate_when_it_ends_before_the_epochs():
    cfg = TrainingConfig(epochs=1000, initial_lr=0.01, time_budget_minutes=10)
    # 3 of 1000 epochs done but 7.5 of 10 minutes used: the schedule is 75 % through
    assert cfg.lr_at(3, elapsed_s=450) == pytest.approx(0.01 * 0.25 ** 0.9)
    # the epoch fraction wins when it is further along
    cfg = TrainingConfig(epochs=4, initial_lr=0.01, time_budget_minutes=60)
    assert cfg.lr_at(2, elapsed_s=60) == pytest.approx(0.01 * 0.5 ** 0.9)
    # no budget: elapsed time is ignored
    assert TrainingConfig(epochs=4, initial_lr=0.01).lr_at(0, elapsed_s=1e9) == pytest.approx(0.01)


def test_a_run_that_fills_its_budget_anneals_on_time_alone():
    cfg = TrainingConfig(epochs=4, initial_lr=0.01, time_budget_minutes=60, fill_budget=True)
    assert cfg.fills_budget
    # 2 of 4 planned epochs done in 1 of 60 minutes: the run is ahead of its plan and will go on past
    # epoch 4, so the rate follows the minutes (1/60 used), not the epochs (1/2)
    assert cfg.lr_at(2, elapsed_s=60) == pytest.approx(0.01 * (1 - 1 / 60) ** 0.9)
    # behind its plan it is the same rule: 45 of 60 minutes used, 1 of 4 epochs
    assert cfg.lr_at(1, elapsed_s=2700) == pytest.approx(0.01 * 0.25 ** 0.9)
    assert cfg.lr_at(9, elapsed_s=3600) == 0.0
    # without a budget there is nothing to fill: the epochs rule
    free = TrainingConfig(epochs=4, initial_lr=0.01, fill_budget=True)
    assert not free.fills_budget and free.lr_at(2, elapsed_s=60) == pytest.approx(0.01 * 0.5 ** 0.9)


def test_fine_tuning_shortens_the_schedule_and_keeps_the_rate():
    from AutoSegLib.training.config import finetune_defaults

    cfg = finetune_defaults(TrainingConfig(init_from="model"), set())
    assert cfg.epochs == 100 and cfg.initial_lr == pytest.approx(0.01)
    # what the user set stays
    cfg = finetune_defaults(TrainingConfig(init_from="model", epochs=7, initial_lr=0.002), {"epochs", "initial_lr"})
    assert (cfg.epochs, cfg.initial_lr) == (7, 0.002)
