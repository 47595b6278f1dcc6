"""Train ESPCN super-resolution on the Y channel of any folder of PNG/JPEG photos.

    python -m training.sr.train --scale 3 --train-dir ../shared/data/sr/train \
        --eval-dir ../shared/data/sr/test/Set5

Low-resolution inputs are made the standard way: bicubic down-scaling of the (mod-cropped)
ground truth. PSNR is measured on Y with `scale` pixels cropped from each border.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from training import common
from training.sr.model import ESPCN

DEFAULT_TRAIN = common.REPO_ROOT.parent / "shared" / "data" / "sr" / "train"
DEFAULT_EVAL = common.REPO_ROOT.parent / "shared" / "data" / "sr" / "test" / "Set5"


def load_training_pairs(folder: Path, scale: int, rescales: tuple[float, ...]) -> list[tuple]:
    """Every image at each of `rescales` (a cheap way to stretch a small photo set)."""
    pairs = []
    for path in common.list_images(folder):
        y = common.load_y(path)
        for f in rescales:
            img = (
                y
                if f == 1.0
                else common.bicubic_resize(y, (int(y.shape[1] * f), int(y.shape[0] * f)))
            )
            lr, hr = common.sr_pair(img, scale)
            pairs.append((lr.astype(np.float32) / 255.0, hr.astype(np.float32) / 255.0))
    return pairs


def sample_batch(pairs, scale: int, patch: int, batch: int, rng: np.random.Generator):
    """Aligned random LR/HR patches with random flips and 90-degree rotations."""
    lrs, hrs = [], []
    for i in rng.integers(0, len(pairs), batch):
        lr, hr = pairs[i]
        y = int(rng.integers(0, lr.shape[0] - patch + 1))
        x = int(rng.integers(0, lr.shape[1] - patch + 1))
        a = lr[y : y + patch, x : x + patch]
        b = hr[y * scale : (y + patch) * scale, x * scale : (x + patch) * scale]
        k = int(rng.integers(0, 4))
        a, b = np.rot90(a, k), np.rot90(b, k)
        if rng.random() < 0.5:
            a, b = a[:, ::-1], b[:, ::-1]
        lrs.append(a)
        hrs.append(b)
    return (
        torch.from_numpy(np.ascontiguousarray(np.stack(lrs)[:, None])),
        torch.from_numpy(np.ascontiguousarray(np.stack(hrs)[:, None])),
    )


@torch.no_grad()
def evaluate(model, eval_pairs, scale: int, device) -> tuple[float, float]:
    """Mean PSNR (model, bicubic) in dB over full images, Y channel, border `scale` cropped."""
    model.eval()
    ours, bic = [], []
    for lr, hr in eval_pairs:
        x = torch.from_numpy(lr.astype(np.float32) / 255.0)[None, None].to(device)
        out = model(x).clamp(0, 1)[0, 0].cpu().numpy().astype(np.float64) * 255.0
        ours.append(common.psnr(out, hr, border=scale))
        up = common.bicubic_resize(lr, (hr.shape[1], hr.shape[0]))
        bic.append(common.psnr(np.clip(up, 0, 255), hr, border=scale))
    model.train()
    return float(np.mean(ours)), float(np.mean(bic))


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--scale", type=int, choices=[2, 3, 4], default=3)
    p.add_argument("--train-dir", default=str(DEFAULT_TRAIN))
    p.add_argument(
        "--eval-dir", default=str(DEFAULT_EVAL), help="images to report PSNR on each epoch"
    )
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--steps-per-epoch", type=int, default=250)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--patch", type=int, default=24, help="low-resolution patch side")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--features", default="64,64,32", help="conv widths before the sub-pixel layer")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--run-dir", default=None, help="default training/runs/espcn_x<scale>")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.dry_run:
        args.epochs, args.steps_per_epoch = 1, 3

    device = common.setup(args.seed, args.threads)
    run = common.RunDir(args.run_dir or common.DEFAULT_RUNS / f"espcn_x{args.scale}")
    rescales = (1.0,) if args.dry_run else (1.0, 0.8, 0.6)
    pairs = load_training_pairs(Path(args.train_dir), args.scale, rescales)
    pairs = [pp for pp in pairs if min(pp[0].shape) >= args.patch]
    if not pairs:
        raise SystemExit(
            f"no training image in {args.train_dir} is at least {args.patch * args.scale} px a side"
        )
    eval_pairs = [
        common.sr_pair(common.load_y(path), args.scale)
        for path in common.list_images(args.eval_dir)
    ]
    features = tuple(int(f) for f in args.features.split(","))
    config = {"scale": args.scale, "features": list(features)}
    model = ESPCN(args.scale, features).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(
        opt, T_max=args.epochs * args.steps_per_epoch, eta_min=args.lr * 0.01
    )
    start = (
        0
        if args.dry_run
        else common.resume(run.checkpoint, {"model": model}, {"opt": opt}, {"sched": sched})
    )
    if start and sched.T_max != args.epochs * args.steps_per_epoch and start < args.epochs:
        sched = common.anneal_rest(opt, (args.epochs - start) * args.steps_per_epoch)
    log = common.MetricsLog(run.metrics_csv, start)
    rng = np.random.default_rng(args.seed + start)
    if start == 0:
        psnr0, bic = evaluate(model, eval_pairs, args.scale, device)
        log.log(0, eval_psnr=psnr0, eval_bicubic_psnr=bic)

    for epoch in range(start + 1, args.epochs + 1):
        total = 0.0
        for _ in common.progress(
            range(args.steps_per_epoch), args.steps_per_epoch, f"epoch {epoch}", args.quiet
        ):
            lr_b, hr_b = sample_batch(pairs, args.scale, args.patch, args.batch_size, rng)
            loss = F.mse_loss(model(lr_b.to(device)), hr_b.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        ours, bic = evaluate(model, eval_pairs, args.scale, device)
        log.log(
            epoch, train_mse=total / args.steps_per_epoch, eval_psnr=ours, eval_bicubic_psnr=bic
        )
        common.save_checkpoint(
            run.checkpoint,
            models={"model": model},
            optimizers={"opt": opt},
            schedulers={"sched": sched},
            epoch=epoch,
            config=config,
        )
    common.plot_curves(
        log,
        ["eval_psnr", "eval_bicubic_psnr"],
        run.path / "psnr.png",
        f"ESPCN x{args.scale}: PSNR on {Path(args.eval_dir).name}",
        ylabel="PSNR (dB)",
    )
    common.plot_curves(
        log, ["train_mse"], run.path / "loss.png", f"ESPCN x{args.scale}: training MSE"
    )
    return run.checkpoint


if __name__ == "__main__":
    main()
