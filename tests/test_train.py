"""The training protocol: optimizer, schedule, NLL convention, run directories, early stopping."""
import csv
import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from gatedrnn import rundir
from gatedrnn.data.batching import length_sorted_batches, music_examples, pad
from gatedrnn.heads import BernoulliHead
from gatedrnn.model import SequenceModel
from gatedrnn.train import (PaperRMSprop, evaluate, evaluate_run, load_run, lr_at,
                            train, train_step)
from helpers import model_config, train_config


def random_rolls(n, rng, lo=3, hi=12, density=0.1):
    return [(rng.random((rng.integers(lo, hi), 88)) < density).astype(np.uint8) for _ in range(n)]


@pytest.fixture
def tiny_examples():
    rng = np.random.default_rng(0)
    return {s: music_examples(random_rolls(n, rng)) for s, n in
            (("train", 12), ("valid", 5), ("test", 6))}


def test_bernoulli_nll_hand_values():
    head = BernoulliHead(1, 2)
    logits = torch.tensor([[[0.0, 2.0]]])                        # (B=1, T=1, D=2)
    target = torch.tensor([[[1.0, 0.0]]])
    expected = math.log(2) + math.log(1 + math.exp(2.0))         # -log sigma(0) - log(1 - sigma(2))
    assert head.nll(logits, target).item() == pytest.approx(expected, rel=1e-6)
    # stable at extreme logits: no inf, and the right limit
    big = torch.tensor([[[1000.0, -1000.0]]])         # the fast backend's exp stops at e^-87
    assert head.nll(big, torch.tensor([[[1.0, 0.0]]])).item() == pytest.approx(0.0, abs=1e-37)
    assert head.nll(big, torch.tensor([[[0.0, 1.0]]])).item() == pytest.approx(2000.0)


def test_untrained_output_at_zero_logits_is_88_ln2_per_step():
    model = SequenceModel(model_config(cell="gru", hidden_size=4))
    with torch.no_grad():
        model.head.proj.weight.zero_()
        model.head.proj.bias.zero_()
    ex = music_examples(random_rolls(3, np.random.default_rng(1)))
    m = evaluate(model, length_sorted_batches(ex, 2))
    assert m["nll"] == pytest.approx(88 * math.log(2), rel=1e-6)
    assert m["nll_per_sequence"] == pytest.approx(88 * math.log(2), rel=1e-6)


def test_music_examples_shift_by_one_step():
    roll = np.zeros((3, 88), np.uint8)
    roll[0, 5] = roll[1, 7] = roll[2, 9] = 1
    (inputs, targets), = music_examples([roll])
    assert inputs[0].sum() == 0                                  # x_1 is predicted from nothing
    assert inputs[1, 5] == 1 and inputs[2, 7] == 1 and inputs.sum() == 2
    assert torch.equal(targets, torch.as_tensor(roll, dtype=torch.float32))


def test_evaluate_is_nll_over_all_steps_and_padding_free(tiny_examples):
    model = SequenceModel(model_config(cell="lstm", hidden_size=5)).eval()
    ex = tiny_examples["valid"]
    by_one = [model.step_nll(b.inputs, b.targets, b.lengths).sum().item()
              for b in length_sorted_batches(ex, 1)]
    steps = sum(len(i) for i, _ in ex)
    lengths = [len(i) for i, _ in ex]
    for batch_size in (1, 2, 64):
        m = evaluate(model, length_sorted_batches(ex, batch_size))
        assert m["nll"] == pytest.approx(sum(by_one) / steps, rel=1e-6)
    per_seq = [s / n for s, n in zip(by_one, sorted(lengths))]
    assert m["nll_per_sequence"] == pytest.approx(np.mean(per_seq), rel=1e-6)


def test_paper_rmsprop_matches_hand_computation():
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = PaperRMSprop([p], lr=0.1, momentum=0.9, decay=0.95, floor=0.01)
    g1, g2 = torch.tensor([0.5, 0.001]), torch.tensor([-0.3, 0.002])
    ms, v, x = torch.zeros(2), torch.zeros(2), p.detach().clone()
    for g in (g1, g2):
        p.grad = g.clone()
        opt.step()
        ms = 0.95 * ms + 0.05 * g * g
        v = 0.9 * v - 0.1 * g / torch.clamp(ms.sqrt(), min=0.01)
        x = x + v
    assert torch.allclose(p.detach(), x, rtol=0, atol=1e-7)


def test_paper_rmsprop_caps_the_joint_step_not_the_velocity():
    """The released code's momentum_clipping: each update p += s v with s = min(1, cap / ||v||)
    over all parameters together; the stored velocity keeps its full size."""
    p, q = torch.nn.Parameter(torch.tensor([1.0, -2.0])), torch.nn.Parameter(torch.tensor([0.5]))
    opt = PaperRMSprop([p, q], lr=0.5, momentum=0.9, decay=0.95, floor=0.01, max_step=0.3)
    grads = [(torch.tensor([0.5, 0.001]), torch.tensor([2.0])),
             (torch.tensor([-0.3, 0.002]), torch.tensor([-1.0])),
             (torch.tensor([1e-6, 1e-6]), torch.tensor([1e-6]))]
    ms = [torch.zeros(2), torch.zeros(1)]
    v = [torch.zeros(2), torch.zeros(1)]
    x = [p.detach().clone(), q.detach().clone()]
    scales = []
    for gs in grads:
        p.grad, q.grad = gs[0].clone(), gs[1].clone()
        opt.step()
        for k, g in enumerate(gs):
            ms[k] = 0.95 * ms[k] + 0.05 * g * g
            v[k] = 0.9 * v[k] - 0.5 * g / torch.clamp(ms[k].sqrt(), min=0.01)
        norm = torch.sqrt(sum((vk ** 2).sum() for vk in v))
        scales.append(min(1.0, 0.3 / norm.item()))
        x = [xk + scales[-1] * vk for xk, vk in zip(x, v)]
        torch.testing.assert_close(opt.state[p]["v"], v[0], rtol=1e-6, atol=1e-7)  # not rescaled
    assert scales[0] < 1 and scales[1] < 1                          # the cap was binding
    torch.testing.assert_close(p.detach(), x[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(q.detach(), x[1], rtol=0, atol=1e-6)


def test_released_objective_sums_the_nll_and_does_not_clip(tiny_examples):
    """objective "released": the gradient is that of the NLL summed over notes and steps (the
    mean objective's times the number of steps), never clipped; "mean" clips it to clip_norm."""
    batch = pad(tiny_examples["train"][:4])
    grads = {}
    for objective in ("mean", "released"):
        model = SequenceModel(model_config(cell="gru", hidden_size=6, weight_noise=0.0))
        torch.manual_seed(5)
        model.load_state_dict(SequenceModel(model_config(cell="gru", hidden_size=6)).state_dict())
        opt = torch.optim.SGD(model.parameters(), lr=0.0)            # lr 0: inspect the gradient
        loss, _ = train_step(model, opt, batch, train_config(objective=objective, clip_norm=1e-3))
        grads[objective] = torch.cat([p.grad.flatten() for p in model.parameters()])
        assert loss == pytest.approx(model.step_nll(batch.inputs, batch.targets,
                                                    batch.lengths).sum().item() / batch.steps,
                                     rel=1e-5)
    assert grads["mean"].norm().item() == pytest.approx(1e-3, rel=1e-4)          # clipped
    assert grads["released"].norm().item() > 1e3 * grads["mean"].norm().item()   # summed, free
    unclipped_mean = grads["released"] / batch.steps
    assert torch.allclose(grads["mean"] / grads["mean"].norm(),
                          unclipped_mean / unclipped_mean.norm(), atol=1e-5)


def test_released_objective_caps_the_update_in_training():
    from gatedrnn.train import optimizer_for
    model = SequenceModel(model_config(cell="tanh", hidden_size=3))
    opt = optimizer_for(model, train_config(objective="released", max_step=0.5))
    assert [g["max_step"] for g in opt.param_groups] == [0.5]
    opt = optimizer_for(model, train_config(objective="mean", max_step=0.5))
    assert [g["max_step"] for g in opt.param_groups] == [None]


def test_learning_rate_decays_linearly_to_one_percent():
    c = train_config(lr=0.02, epochs=500)
    assert lr_at(c, 1) == pytest.approx(0.02)
    assert lr_at(c, 500) == pytest.approx(0.0002)
    assert lr_at(c, 250) == pytest.approx(0.02 * (1 - 0.99 * 249 / 499))


@pytest.mark.parametrize("cell", ["tanh", "gru", "lstm"])
def test_train_step_changes_every_parameter(cell, tiny_examples):
    model = SequenceModel(model_config(cell=cell, hidden_size=6, weight_noise=0.075))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = PaperRMSprop(model.parameters(), lr=1e-3)
    batch = pad(tiny_examples["train"][:4])
    loss, _ = train_step(model, opt, batch, train_config(clip_norm=1.0))
    assert math.isfinite(loss)
    for name, value in model.state_dict().items():
        assert not torch.equal(value, before[name]), f"{name} did not change"


def test_gradient_norm_is_rescaled_to_one(tiny_examples):
    model = SequenceModel(model_config(cell="gru", hidden_size=6))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)           # lr 0: inspect the gradient
    train_step(model, opt, pad(tiny_examples["train"][:4]), train_config(clip_norm=1e-3))
    norm = torch.sqrt(sum((p.grad ** 2).sum() for p in model.parameters()))
    assert norm.item() == pytest.approx(1e-3, rel=1e-4)


def test_weight_noise_only_while_training(tiny_examples):
    model = SequenceModel(model_config(cell="gru", hidden_size=6, weight_noise=0.5))
    batches = length_sorted_batches(tiny_examples["valid"], 4)
    assert evaluate(model, batches) == evaluate(model, batches)
    model.train()
    b = batches[0]
    with torch.no_grad():
        a1 = model.step_nll(b.inputs, b.targets, b.lengths).sum()
        a2 = model.step_nll(b.inputs, b.targets, b.lengths).sum()
    assert a1 != a2


def test_train_writes_run_directory_and_eval_reproduces_it(tmp_path, tiny_examples):
    config = train_config(cell="lstm", hidden_size=8, epochs=4, batch_size=3, lr=3e-3)
    metrics = train(config, tmp_path, tiny_examples, log=lambda s: None)
    for name in ("config.json", "metrics.json", "curves.csv", "model.safetensors"):
        assert (tmp_path / name).is_file()
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*"))
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved == metrics
    for key in ("train_nll", "valid_nll", "test_nll", "params", "recurrent_params", "best_epoch",
                "seconds"):
        assert key in saved
    assert saved["recurrent_params"] == 4 * (88 * 8 + 8 * 8 + 8) + 3 * 8
    rows = list(csv.DictReader((tmp_path / "curves.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert int(rows[-1]["updates"]) == 4 * 4                      # 12 sequences / batch 3
    best = min(rows, key=lambda r: float(r["valid_nll"]))
    assert int(best["epoch"]) == saved["best_epoch"]
    assert float(best["valid_nll"]) == pytest.approx(saved["valid_nll"])
    # the best model is a plain safetensors file that rebuilds the same model
    state = load_file(str(tmp_path / "model.safetensors"))
    assert set(state) == set(SequenceModel(model_config(cell="lstm", hidden_size=8)).state_dict())
    _, model, _ = load_run(tmp_path)
    fixed = {s: length_sorted_batches(e, 64) for s, e in tiny_examples.items()}
    assert evaluate(model, fixed["test"])["nll"] == pytest.approx(saved["test_nll"], rel=1e-9)
    assert evaluate(model, fixed["valid"])["nll"] == pytest.approx(saved["valid_nll"], rel=1e-9)


def test_training_lowers_validation_nll(tmp_path):
    # a learnable pattern: note 40 on at even steps, note 47 at odd steps
    rolls = []
    for n in range(20):
        r = np.zeros((10 + n % 5, 88), np.uint8)
        r[0::2, 40 - 21] = 1
        r[1::2, 47 - 21] = 1
        rolls.append(r)
    ex = {"train": music_examples(rolls[:12]), "valid": music_examples(rolls[12:16]),
          "test": music_examples(rolls[16:])}
    m = train(train_config(cell="gru", hidden_size=8, epochs=30, batch_size=4, lr=1e-2),
              tmp_path, ex, log=lambda s: None)
    rows = list(csv.DictReader((tmp_path / "curves.csv").open()))
    assert m["valid_nll"] < 0.25 * float(rows[0]["valid_nll"])
    assert m["test_nll"] < 10.0


def test_early_stopping_keeps_the_best_epoch(tmp_path, tiny_examples):
    # a learning rate this large makes validation NLL worse after the first epochs
    config = train_config(cell="tanh", hidden_size=4, epochs=50, batch_size=2, lr=1.0, patience=2)
    m = train(config, tmp_path, tiny_examples, log=lambda s: None)
    assert m["epochs"] == m["best_epoch"] + 2
    rows = list(csv.DictReader((tmp_path / "curves.csv").open()))
    assert len(rows) == m["epochs"]
    assert m["valid_nll"] == pytest.approx(min(float(r["valid_nll"]) for r in rows))


def test_same_seed_same_metrics(tmp_path, tiny_examples):
    config = train_config(cell="gru", hidden_size=5, epochs=2, batch_size=4)
    a = train(config, tmp_path / "a", tiny_examples, log=lambda s: None)
    b = train(config, tmp_path / "b", tiny_examples, log=lambda s: None)
    a.pop("seconds"), b.pop("seconds")
    assert a == b


def test_result_files_refuse_nan(tmp_path):
    with pytest.raises(ValueError, match="non-finite"):
        rundir.write_json(tmp_path / "m.json", {"test_nll": float("nan")})
    assert not (tmp_path / "m.json").exists()


def test_eval_run_on_real_data(tmp_path, polyphonic_dir):
    config = train_config(dataset="jsb", cell="gru", epochs=1, batch_size=64,
                         data_dir=str(polyphonic_dir))
    m = train(config, tmp_path, log=lambda s: None)
    assert 20 < m["test_nll"] < 88 * math.log(2)                  # better than uniform, 1 epoch
    again = evaluate_run(tmp_path)
    for split in ("train", "valid", "test"):
        assert again[f"{split}_nll"] == pytest.approx(m[f"{split}_nll"], rel=1e-9)


@pytest.mark.parametrize("bad, match", [
    ({"dataset": "mnist"}, "unknown dataset 'mnist'"),
    ({"cell": "rnn"}, "unknown unit 'rnn'"),
    ({"variant": "keras"}, "unknown variant"),
    ({"lr": -1.0}, "lr must be a positive number"),
    ({"epochs": 0}, "epochs must be a positive integer"),
    ({"momentum": 1.5}, r"momentum must be a number in \[0, 1\)"),
])
def test_bad_config_is_a_user_error(bad, match):
    from gatedrnn.errors import UserError
    with pytest.raises(UserError, match=match):
        train_config(**bad)
