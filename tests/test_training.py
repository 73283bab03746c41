"""The training engine: learning, exact resume, NaN stop, exports, frozen backbone, static baselines, CLI."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from adaperceiver import from_pretrained
from adaperceiver.cli import main
from adaperceiver.errors import UserError
from adaperceiver.tasks import evaluate_classification, get_task, list_tasks
from adaperceiver.training import NonFiniteLossError, TrainConfig, Trainer, last_checkpoint, load_run_config
from adaperceiver.training.schedule import EpochBatchSampler, warmup_cosine

pytest.importorskip("sklearn")  # the runs below train on sklearn's 8x8 digits

TINY = dict(patch_size=4, embed_dim=16, num_heads=2, depth=2, num_latents=8, token_grans=(4, 8), widths=(8, 16))


pytestmark = pytest.mark.usefixtures("one_thread")


def cfg_for(tmp_path, name="run", **kw) -> TrainConfig:
    base = dict(dataset="digits", train_subset=64, val_subset=32, model_overrides=TINY, epochs=2, batch_size=16,
                lr=3e-3, warmup_steps=2, out_dir=str(tmp_path), name=name, progress=False, log_every=2)
    base.update(kw)
    return TrainConfig(**base)


def params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_loss_decreases_on_a_tiny_subset(tmp_path):
    cfg = cfg_for(tmp_path, epochs=25, augment=False, ema_decay=0.0, eval_every=0)
    trainer = Trainer(cfg, get_task("classification"))
    loader = torch.utils.data.DataLoader(trainer.data.train, batch_size=64)
    before = evaluate_classification(trainer.model, loader, trainer.device)
    result = trainer.fit()
    after = evaluate_classification(trainer.model, loader, trainer.device)
    assert result.finished and result.step == 25 * 4
    assert after["loss"] < before["loss"] - 0.5 and after["acc1"] > before["acc1"] + 20
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("step,epoch,split") and "img_s" in rows[0] and len(rows) > 20


def test_resume_gives_the_same_parameters_as_uninterrupted(tmp_path):
    """Stop mid-epoch (step 5 of 2 x 4), resume in a new Trainer: same weights, EMA and metrics steps."""
    full = Trainer(cfg_for(tmp_path, "full", checkpoint_every=3), get_task("classification"))
    full.fit()
    first = Trainer(cfg_for(tmp_path, "cut", checkpoint_every=3, max_steps=5), get_task("classification"))
    res = first.fit()
    assert not res.finished and res.step == 5 and last_checkpoint(tmp_path / "cut").name == "step_00000005"
    second = Trainer(cfg_for(tmp_path, "cut", checkpoint_every=3), get_task("classification"))
    assert second.fit(resume=True).finished
    for k, v in params(full.model).items():
        assert torch.equal(v, second.model.state_dict()[k]), k
    for k, v in params(full.ema.module).items():
        assert torch.equal(v, second.ema.module.state_dict()[k]), k
    steps = [line.split(",")[0] for line in (tmp_path / "cut" / "metrics.csv").read_text().splitlines()[1:]]
    full_steps = [line.split(",")[0] for line in (tmp_path / "full" / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == full_steps  # nothing lost, nothing logged twice


def test_resume_refuses_changed_settings_and_overwrite(tmp_path):
    Trainer(cfg_for(tmp_path, max_steps=2), get_task("classification")).fit()
    with pytest.raises(UserError, match="resume it"):
        Trainer(cfg_for(tmp_path), get_task("classification")).fit()
    with pytest.raises(ValueError, match="lr"):
        Trainer(cfg_for(tmp_path, lr=1e-2), get_task("classification")).fit(resume=True)


class NaNAtCall:
    """An extra loss that turns the loss into NaN on its n-th call."""

    def __init__(self, n):
        self.n, self.calls = n, 0

    def __call__(self, out, batch, weights):
        self.calls += 1
        return out.outputs.new_tensor(float("nan") if self.calls == self.n else 0.0), {}


def test_nan_loss_stops_cleanly_and_keeps_the_last_checkpoint(tmp_path):
    trainer = Trainer(cfg_for(tmp_path, epochs=3), get_task("classification"), extra_losses=[NaNAtCall(6)])  # 4 steps per epoch
    with pytest.raises(NonFiniteLossError, match=r"step 5 .*loss is nan.*step_00000004.*new run"):
        trainer.fit()
    assert last_checkpoint(tmp_path / "run").name == "step_00000004"
    model = from_pretrained(tmp_path / "run")
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert json.loads((tmp_path / "run" / "config.json").read_text())["step"] == 4


def test_from_pretrained_gives_the_exported_ema_model(tmp_path):
    cfg = cfg_for(tmp_path, epochs=1)
    result = Trainer(cfg, get_task("classification")).fit()
    meta = json.loads((tmp_path / "run" / "config.json").read_text())
    assert meta["weights"] == "ema" and meta["task"] == "classification" and meta["class_names"][3] == "3"
    loaded = from_pretrained(tmp_path / "run")
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, tokens=4, depth=1, width=8), result.model(x, tokens=4, depth=1, width=8))
    # the precision the run used is stored, resolved from the device's default (fp32 on CPU)
    assert load_run_config(tmp_path / "run") == dataclasses.replace(cfg, precision="fp32")
    raw = Trainer(cfg_for(tmp_path, "raw", epochs=1, export="raw"), get_task("classification"))
    raw.fit()
    with torch.no_grad():
        torch.testing.assert_close(from_pretrained(tmp_path / "raw")(x), raw.model.eval()(x))


def test_frozen_backbone_trains_only_the_readout(tmp_path):
    Trainer(cfg_for(tmp_path, "pre", epochs=1), get_task("classification")).fit()
    trainer = Trainer(cfg_for(tmp_path, "ft", epochs=1, init_from=str(tmp_path / "pre"), freeze_backbone=True), get_task("classification"))
    pre = from_pretrained(tmp_path / "pre").state_dict()
    assert all(torch.equal(v, trainer.model.state_dict()[k]) for k, v in pre.items())  # started from it
    trainer.fit()
    after = trainer.model.state_dict()
    backbone = {id(p) for p in trainer.model.backbone_parameters()}
    for name, p in trainer.model.named_parameters():
        changed = not torch.equal(after[name], pre[name])
        assert changed != (id(p) in backbone), name  # backbone frozen, everything else trained
    with pytest.raises(ValueError, match="init_from"):
        TrainConfig(freeze_backbone=True)


def test_static_baseline_has_the_static_shape(tmp_path):
    cfg = cfg_for(tmp_path, "static", epochs=1, static=(4, 1, 8), objective={"all_depths": False, "all_tokens": False,
                                                                            "sample_widths": False})
    trainer = Trainer(cfg, get_task("classification"))
    m = trainer.model
    assert m.cfg.num_latents == 4 and m.num_blocks == 1 and m.blocks[0].mlp.hidden_dim == 16
    trainer.fit()
    assert from_pretrained(tmp_path / "static").cfg.num_latents == 4


def test_plain_vit_baseline_matches_the_full_configuration_flops(tmp_path):
    from adaperceiver.cli.demo import matched_vit_config, train_vit_baseline
    from adaperceiver.evaluation import measure_gflops
    from adaperceiver.models.vit import StaticViT

    cfg = cfg_for(tmp_path, "ada", epochs=1)
    ada = Trainer(cfg, get_task("classification")).model
    vc = matched_vit_config(ada)
    assert (vc.embed_dim, vc.patch_size, vc.num_heads, vc.img_size) == (16, 4, 2, 8)
    target = measure_gflops(ada)
    gaps = {d: abs(measure_gflops(StaticViT(type(vc)(**{**vc.to_dict(), "depth": d}))) - target)
            for d in range(1, 5)}
    assert gaps[vc.depth] == min(gaps.values())
    entry = train_vit_baseline(cfg, ada, latency_batch_size=2)
    assert entry["tokens"] is None and entry["depth"] == vc.depth and 0 <= entry["acc1"] <= 100
    assert entry["gflops"] == pytest.approx(target, rel=0.5) and entry["latency_ms"] > 0
    assert isinstance(from_pretrained(entry["run_dir"]), StaticViT)


def test_sampler_and_schedule():
    a = [b for b in EpochBatchSampler(10, 3, seed=0, epoch=1)]
    assert len(a) == 3 and all(len(b) == 3 for b in a) and len({i for b in a for i in b}) == 9
    assert [b for b in EpochBatchSampler(10, 3, 0, 1, start_batch=2)] == a[2:]
    assert a != [b for b in EpochBatchSampler(10, 3, seed=0, epoch=2)]
    f = warmup_cosine(100, 10, 0.01)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0) and f(99) == pytest.approx(0.01, abs=1e-3)
    assert all(f(i) >= f(i + 1) for i in range(10, 99))


def test_task_registry():
    assert "classification" in list_tasks() and get_task("classification").primary_metric == "acc1"
    with pytest.raises(ValueError, match="classification"):
        get_task("captioning")
    with pytest.raises(ValueError, match="export"):
        TrainConfig(export="best")


def test_cli_train_resume_and_help(tmp_path, capsys):
    args = ["train", "--dataset", "digits", "--train-subset", "48", "--val-subset", "16", "--batch-size", "16",
            "--epochs", "2", "--out", str(tmp_path), "--name", "cli", "--no-progress", "--warmup-steps", "1"]
    args += [f"--set={k}={json.dumps(v)}" for k, v in TINY.items()]
    assert main(args + ["--max-steps", "4"]) == 0
    assert "stopped at step 4" in capsys.readouterr().out
    assert main(["train", "--out", str(tmp_path), "--name", "cli", "--resume", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "finished" in out and "val_acc1" in out and last_checkpoint(tmp_path / "cli").name == "step_00000006"
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--static", "4,1"])
    assert exit_.value.code == 2 and "--static takes TOKENS,DEPTH,WIDTH" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    assert "Fashion-MNIST" in capsys.readouterr().out


def test_nonfinite_config_values_rejected():
    with pytest.raises(ValueError, match="ema_decay"):
        TrainConfig(ema_decay=1.0)
    assert math.isclose(TrainConfig().grad_clip, 3.0)


def test_trains_on_a_users_image_folder(tmp_path, make_folder):
    make_folder(tmp_path / "data")
    cfg = cfg_for(tmp_path, "folder", dataset="imagefolder", data_dir=str(tmp_path / "data"), image_size=8,
                  train_subset=None, val_subset=None, batch_size=2, epochs=1,
                  model_overrides={**TINY, "in_chans": 1})
    trainer = Trainer(cfg, get_task("classification"))
    result = trainer.fit()
    assert result.finished and result.step == 3
    # the logged validation accuracy is the exported model's on the 4 validation images
    assert result.metrics["val_acc1"] in (0.0, 25.0, 50.0, 75.0, 100.0)
    direct = evaluate_classification(result.model, trainer.val_loader(), trainer.device)
    assert result.metrics["val_acc1"] == pytest.approx(direct["acc1"])
    meta = json.loads((tmp_path / "folder" / "config.json").read_text())
    assert meta["class_names"] == ["cat", "dog"] and meta["model"]["in_chans"] == 1
    # the run keeps how its images were prepared: grey 8 px, mean/std measured on the folder, class names
    dc = meta["data_config"]
    assert (dc["in_chans"], dc["input_size"], dc["class_names"]) == (1, 8, ["cat", "dog"])
    assert from_pretrained(tmp_path / "folder").data_config.to_dict() == dc
    assert meta["image_folder"]["train"]["layout"] == "train/val" and meta["image_folder"]["val"]["num_images"] == 4


def test_weight_decay_skips_what_the_model_names(tmp_path):
    from adaperceiver import build_model
    from adaperceiver.models.heads import build_dense_model
    from adaperceiver.models.vit import StaticViT, ViTConfig

    cfg = cfg_for(tmp_path)
    model = build_model(get_task("classification").build_model(cfg, get_task("classification").build_data(cfg)).cfg)
    assert model.no_weight_decay() == {"latent_token", "patch_embed.pos_embed"}  # mean read-out: no output query
    from adaperceiver import create_model

    assert create_model("adaperceiver_tiny_paper").no_weight_decay() == {"latent_token", "output_query", "patch_embed.pos_embed"}
    dense = build_dense_model("segmentation", model.cfg, {"num_classes": 3})
    assert dense.no_weight_decay() == {"backbone.latent_token", "backbone.patch_embed.pos_embed"}
    assert StaticViT(ViTConfig()).no_weight_decay() <= {n for n, _ in StaticViT(ViTConfig()).named_parameters()}
    trainer = Trainer(cfg, get_task("classification"))
    decay, no_decay = trainer.optimizer.param_groups
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    skipped = {names[id(p)] for p in no_decay["params"] if id(p) in names}
    assert trainer.model.no_weight_decay() <= skipped and decay["weight_decay"] > 0 == no_decay["weight_decay"]
    assert all(p.dim() >= 2 for p in decay["params"]) and not {names.get(id(p)) for p in decay["params"]} & skipped
