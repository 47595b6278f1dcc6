"""Train the convolutional autoencoder on Fashion-MNIST (pixels in [0, 1], MSE loss).

python -m training.autoencoder.train --epochs 4
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from training import common
from training.autoencoder.model import Autoencoder


@torch.no_grad()
def test_mse(model, x: torch.Tensor, batch_size: int = 1000) -> float:
    model.eval()
    total = sum(
        F.mse_loss(model(x[i]), x[i], reduction="sum").item()
        for i in common.batches(len(x), batch_size, False)
    )
    model.train()
    return total / x.numel()


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--run-dir", default=None, help="default training/runs/conv_autoencoder")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.dry_run:
        args.epochs = 1

    device = common.setup(args.seed, args.threads)
    run = common.RunDir(args.run_dir or common.DEFAULT_RUNS / "conv_autoencoder")
    xtr = common.to_tensor_images(
        common.load_mnist_like("train", args.data_dir, limit=args.limit)[0], device
    )
    xte = common.to_tensor_images(
        common.load_mnist_like("test", args.data_dir, limit=args.limit)[0], device
    )
    model = Autoencoder(args.width).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    steps = (len(xtr) + args.batch_size - 1) // args.batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=args.lr, epochs=args.epochs, steps_per_epoch=steps
    )
    start = (
        0
        if args.dry_run
        else common.resume(run.checkpoint, {"model": model}, {"opt": opt}, {"sched": sched})
    )
    if start and sched.total_steps != args.epochs * steps and start < args.epochs:
        sched = common.anneal_rest(opt, (args.epochs - start) * steps)
    log = common.MetricsLog(run.metrics_csv, start)
    gen = torch.Generator().manual_seed(args.seed + start)
    for epoch in range(start + 1, args.epochs + 1):
        total, seen = 0.0, 0
        for i, idx in enumerate(
            common.progress(
                common.batches(len(xtr), args.batch_size, True, gen),
                steps,
                f"epoch {epoch}",
                args.quiet,
            )
        ):
            loss = F.mse_loss(model(xtr[idx]), xtr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            seen += len(idx)
            if args.dry_run and i >= 4:
                break
        log.log(epoch, train_mse=total / seen, test_mse=test_mse(model, xte))
        common.save_checkpoint(
            run.checkpoint,
            models={"model": model},
            optimizers={"opt": opt},
            schedulers={"sched": sched},
            epoch=epoch,
            config={"width": args.width},
        )
    common.plot_curves(
        log, ["train_mse", "test_mse"], run.path / "loss.png", "conv autoencoder: MSE per pixel"
    )
    with torch.no_grad():
        model.eval()
        originals = xte[:16]
        recon = model(originals)
    pics = np.concatenate([common.to_uint8(originals), common.to_uint8(recon)])
    common.save_grid(
        pics, run.path / "reconstructions.png", nrow=16, scale=2
    )  # top: input, bottom: output
    return run.checkpoint


if __name__ == "__main__":
    main()
