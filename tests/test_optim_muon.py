"""Muon optimizer: each preset against a re-derivation or torch's own optimizer, checkpoints, errors.

The references below are written with plain tensor ops (no call into li2_lightning.optim), from
docs/theory.md §8 (li2) and KellerJordan/Muon's ``muon_update`` (keller).
"""

import copy
import io
import math

import pytest
import torch
from torch import nn

from li2_lightning.optim import Muon

LI2_TRIPLES = [(4.01, -9.22, 5.80), (3.49, -6.38, 3.23), (3.34, -6.21, 3.20), (3.64, -7.48, 4.43),
               (3.46, -5.35, 2.85)]  # docs/theory.md §8, typed in again rather than imported
QUINTIC = (3.4445, -4.7750, 2.0315)


class Net(nn.Module):
    """x (n, d_in) -> (xW)² V + b, parameters named like Li2Module's: net.W, net.V, net.b."""

    def __init__(self, d_in=6, K=10, d_out=3, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Module()
        self.net.W = nn.Parameter(torch.randn(d_in, K) / math.sqrt(d_in))
        self.net.V = nn.Parameter(torch.randn(K, d_out) / math.sqrt(K))
        self.net.b = nn.Parameter(torch.zeros(d_out))

    def loss(self, step):
        g = torch.Generator().manual_seed(100 + step)
        x = torch.randn(16, self.net.W.shape[0], generator=g)
        y = torch.randn(16, self.net.V.shape[1], generator=g)
        return (((x @ self.net.W) ** 2 @ self.net.V + self.net.b - y) ** 2).mean()


def backward(model, step):
    for p in model.parameters():
        p.grad = None
    model.loss(step).backward()


def run(model, opt, steps, start=0):
    for t in range(start, start + steps):
        opt.zero_grad()
        model.loss(t).backward()
        opt.step()


def ns_reference(M, triples, dtype=torch.float32):
    X = M.to(dtype)
    tall = X.shape[0] > X.shape[1]
    if tall:
        X = X.T
    X = X / (X.norm() + 1e-7)  # Frobenius
    for a, b, c in triples:
        A = X @ X.T
        B = b * A + c * A @ A  # KellerJordan/Muon's op order, so bfloat16 rounds alike
        X = a * X + B @ X
    return (X.T if tall else X).float()


SHAPES = [(6, 10), (10, 6)]  # wide and tall W


@pytest.mark.parametrize("d_in, K", SHAPES)
def test_li2_step_matches_spec(d_in, K):
    lr, wd = 0.05, 0.1
    model, ref = Net(d_in, K), Net(d_in, K)
    opt = Muon(list(model.named_parameters()), lr=lr, weight_decay=wd, preset="li2")
    adam_ref = torch.optim.Adam([ref.net.V, ref.net.b], lr=lr, weight_decay=wd)  # coupled L2
    m = torch.zeros_like(ref.net.W)
    for t in range(4):
        opt.zero_grad()
        model.loss(t).backward()
        opt.step()
        backward(ref, t)
        with torch.no_grad():
            m = 0.99 * m + 0.01 * ref.net.W.grad  # EMA, no Nesterov
            O = ns_reference(m, LI2_TRIPLES)  # five per-step triples, float32, no shape scaling
            ref.net.W.mul_(1 - lr * wd)  # decoupled decay before the update
            ref.net.W.sub_(lr * O)
        adam_ref.step()
        for name in ("W", "V", "b"):
            torch.testing.assert_close(getattr(model.net, name), getattr(ref.net, name), rtol=1e-5, atol=1e-6)
    assert opt.param_groups[0]["use_muon"] and opt.param_groups[0]["param_names"] == ["net.W"]
    assert opt.param_groups[1]["param_names"] == ["net.V", "net.b"]


@pytest.mark.parametrize("ns_dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("d_in, K", SHAPES)
def test_keller_step_matches_reference(d_in, K, ns_dtype):
    lr, wd, adam_lr = 0.05, 0.1, 3e-3
    model, ref = Net(d_in, K), Net(d_in, K)
    opt = Muon(list(model.named_parameters()), lr=lr, weight_decay=wd, preset="keller", adam_lr=adam_lr,
               ns_dtype=ns_dtype)
    adamw_ref = torch.optim.AdamW([ref.net.V, ref.net.b], lr=adam_lr, weight_decay=wd)
    buf = torch.zeros_like(ref.net.W)
    dtype = getattr(torch, ns_dtype)
    tol = dict(rtol=1e-5, atol=1e-6) if ns_dtype == "float32" else dict(rtol=1e-3, atol=1e-4)
    for t in range(4):
        opt.zero_grad()
        model.loss(t).backward()
        opt.step()
        backward(ref, t)
        with torch.no_grad():
            g = ref.net.W.grad
            buf = 0.95 * buf + 0.05 * g
            u = 0.05 * g + 0.95 * buf  # Nesterov: g.lerp(buf, 0.95)
            O = ns_reference(u, [QUINTIC] * 5, dtype)
            scale = max(1, d_in / K) ** 0.5
            ref.net.W.mul_(1 - lr * wd)
            ref.net.W.sub_(lr * scale * O)
        adamw_ref.step()
        for name in ("W", "V", "b"):
            torch.testing.assert_close(getattr(model.net, name), getattr(ref.net, name), **tol)


@pytest.mark.parametrize("d_in, K", SHAPES)
def test_torch_preset_equals_torch_muon(d_in, K):
    lr, wd, adam_lr = 0.05, 0.1, 3e-3
    model, ref = Net(d_in, K), Net(d_in, K)
    opt = Muon(list(model.named_parameters()), lr=lr, weight_decay=wd, preset="torch", adam_lr=adam_lr)
    # matched explicitly: torch.optim.Muon defaults weight_decay to 0.1 and runs NS in bfloat16
    muon_ref = torch.optim.Muon([ref.net.W], lr=lr, weight_decay=wd, momentum=0.95, nesterov=True,
                                ns_coefficients=QUINTIC, eps=1e-7, ns_steps=5, adjust_lr_fn="original")
    adamw_ref = torch.optim.AdamW([ref.net.V, ref.net.b], lr=adam_lr, weight_decay=wd)
    for t in range(4):
        run(model, opt, 1, start=t)
        backward(ref, t)
        muon_ref.step()
        adamw_ref.step()
        for name in ("W", "V", "b"):
            assert torch.equal(getattr(model.net, name), getattr(ref.net, name)), (t, name)
    torch.testing.assert_close(opt.state[model.net.W]["momentum_buffer"],
                               muon_ref.state[ref.net.W]["momentum_buffer"], rtol=0, atol=0)


@pytest.mark.parametrize("decoupled, reference", [(False, torch.optim.Adam), (True, torch.optim.AdamW)])
def test_adam_groups_equal_torch(decoupled, reference):
    model, ref = Net(), Net()
    opt = Muon(list(model.named_parameters()), lr=0.02, weight_decay=0.05, adam_lr=1e-2, adam_betas=(0.8, 0.99),
               adam_eps=1e-6, adam_weight_decay=0.3, adam_decoupled=decoupled)
    torch_ref = reference([ref.net.V, ref.net.b], lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.3)
    muon_W = torch.optim.SGD([ref.net.W], lr=0.0)  # W is Muon's; only V and b are compared
    for t in range(5):
        run(model, opt, 1, start=t)
        backward(ref, t)
        torch_ref.step()
        muon_W.step()
        for name in ("V", "b"):
            assert torch.equal(getattr(model.net, name), getattr(ref.net, name)), (t, name)
        ref.net.W.data.copy_(model.net.W)  # follow Muon's W so the gradients stay matched


@pytest.mark.parametrize("preset", ["li2", "keller", "torch"])
def test_state_dict_round_trip_continues_identically(preset):
    model = Net()
    opt = Muon(list(model.named_parameters()), lr=0.03, weight_decay=0.1, preset=preset, adam_lr=5e-3)
    run(model, opt, 3)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    ckpt = torch.load(buffer, weights_only=True)  # as a Lightning checkpoint is read
    run(model, opt, 3, start=3)

    resumed = Net(seed=123)
    resumed.load_state_dict(ckpt["model"])
    opt2 = Muon(list(resumed.named_parameters()), lr=0.03, weight_decay=0.1, preset=preset, adam_lr=5e-3)
    opt2.load_state_dict(ckpt["opt"])
    run(resumed, opt2, 3, start=3)
    for name in ("W", "V", "b"):
        assert torch.equal(getattr(model.net, name), getattr(resumed.net, name)), name
    # and a pickled copy (deepcopy) steps on identically too
    twin_model, twin_opt = copy.deepcopy((model, opt))
    run(model, opt, 1, start=6)
    run(twin_model, twin_opt, 1, start=6)
    assert torch.equal(model.net.W, twin_model.net.W)


@pytest.mark.parametrize("preset", ["li2", "keller", "torch"])
def test_scheduler_lr_reaches_both_groups(preset):
    model = Net()
    opt = Muon(list(model.named_parameters()), lr=0.03, preset=preset, adam_lr=5e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 0.5 ** epoch)
    run(model, opt, 1)
    sched.step()
    assert [g["lr"] for g in opt.param_groups] == [0.015, 0.0025]
    for g in opt.param_groups:
        g["lr"] = 0.0  # a zero learning rate must freeze every parameter: Muon reads the group's lr
    before = [p.detach().clone() for p in model.parameters()]
    run(model, opt, 2)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_patterns_match_full_and_last_name():
    model = Net()
    named = list(model.named_parameters())
    assert Muon(named).param_groups[0]["param_names"] == ["net.W"]  # default: the first layer W
    assert Muon(named, muon_params="net.V").param_groups[0]["param_names"] == ["net.V"]
    both = Muon(named, muon_params=["W", "net.[V]"])
    assert both.param_groups[0]["param_names"] == ["net.W", "net.V"]
    assert both.param_groups[1]["param_names"] == ["net.b"]
    assert len(Muon(named, muon_params="net.[WV]").param_groups) == 2


def test_plain_params_and_groups_accepted():
    model = Net()
    plain = Muon(list(model.parameters()), muon_params="0")  # unnamed: matched by index
    assert plain.param_groups[0]["params"][0] is model.net.W
    groups = Muon([{"params": [model.net.W], "use_muon": True, "lr": 0.1},
                   {"params": [model.net.V, model.net.b], "use_muon": False}], lr=0.02, adam_lr=1e-3)
    assert [g["lr"] for g in groups.param_groups] == [0.1, 1e-3]
    run(model, groups, 2)


def test_yaml_selectable_through_the_cli(monkeypatch):
    from li2_lightning.cli import Li2CLI
    from li2_lightning.data import GroupArithmeticDataModule
    from li2_lightning.module import Li2Module

    monkeypatch.setattr("sys.argv", ["train.py"])

    cli = Li2CLI(
        Li2Module, GroupArithmeticDataModule, run=False, parser_kwargs={"parser_mode": "omegaconf"},
        args=["--seed_everything", "0", "--model.K", "8", "--data.group", "Z5", "--trainer.logger", "false",
              "--trainer.enable_checkpointing", "false",
              "--model.optimizer", '{"class_path": "li2_lightning.optim.Muon", '
              '"init_args": {"lr": 0.02, "preset": "li2", "adam_lr": 0.001, "weight_decay": 2e-4}}'],
    )
    opt = cli.model.configure_optimizers()
    assert isinstance(opt, Muon) and opt.preset == "li2"
    assert [g["param_names"] for g in opt.param_groups] == [["net.W"], ["net.V"]]
    assert [g["lr"] for g in opt.param_groups] == [0.02, 0.001]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(preset="adam"), r"`preset`='adam'.*'li2', 'keller', 'torch'"),
        (dict(muon_params="net.X*"),
         r"'net.X\*' matches no parameter; the parameters are \['net.W', 'net.V', 'net.b'\]"),
        (dict(muon_params=["W", "nope"]), r"'nope' matches no parameter"),
        (dict(muon_params="b"), r"selects 'net.b' with shape \(3,\).*2-D"),
        (dict(muon_params=[]), r"selects nothing"),
        (dict(ns_dtype="float16"), r"`ns_dtype`='float16'.*bfloat16"),
        (dict(preset="torch", ns_dtype="float32"), r"always runs Newton-Schulz in bfloat16"),
        (dict(preset="torch", distributed=True), r"`distributed`=True with preset='torch'"),
        (dict(ns_steps=6), r"`ns_steps`=6.*\[1, 5\]"),
        (dict(momentum=1.0), r"`momentum`=1.0 is out of range"),
        (dict(lr=-1.0), r"`lr`=-1.0 is out of range"),
        (dict(adam_betas=(0.9, 1.5)), r"`adam_betas\[1\]`=1.5"),
    ],
)
def test_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Muon(list(Net().named_parameters()), **kwargs)


def test_group_errors():
    model = Net()
    with pytest.raises(ValueError, match="no 'use_muon' key"):
        Muon([{"params": [model.net.W]}])
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        Muon([{"params": [model.net.b], "use_muon": True}])
    with pytest.raises(ValueError, match="empty"):
        Muon([])


def test_trainer_with_clipping_and_scheduler(tmp_path):
    """Li2Module + Muon under a Trainer: automatic optimization, gradient clipping and an epoch LR
    schedule act on both groups."""
    from functools import partial

    from lightning.pytorch import Trainer, seed_everything

    from li2_lightning.data import GroupArithmeticDataModule
    from li2_lightning.module import Li2Module

    seed_everything(0)
    dm = GroupArithmeticDataModule(group="Z7", train_fraction=0.5, split_seed=0)
    model = Li2Module(K=8, M=dm.M, optimizer=partial(Muon, lr=0.02, adam_lr=1e-3, weight_decay=1e-3),
                      scheduler=partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5))
    W0 = model.net.W.detach().clone()
    trainer = Trainer(max_epochs=3, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                      gradient_clip_val=1e-3, default_root_dir=tmp_path)
    trainer.fit(model, dm)
    opt = trainer.optimizers[0]
    assert isinstance(opt, Muon)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.02 / 8, 1e-3 / 8])
    assert not torch.equal(model.net.W, W0)
    assert opt.state[model.net.W]["momentum_buffer"].norm() <= 1e-3 + 1e-9  # an EMA of clipped gradients
