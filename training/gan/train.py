"""Train a DCGAN generator on Fashion-MNIST, or a class-conditional one with --conditional.

python -m training.gan.train --epochs 3
python -m training.gan.train --conditional --epochs 3
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from training import common
from training.gan.model import NUM_CLASSES, Discriminator, Generator, init_weights


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--conditional", action="store_true", help="class-conditional generator (cdcgan)"
    )
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--latent", type=int, default=64)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--run-dir", default=None, help="default training/runs/dcgan or cdcgan")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.dry_run:
        args.epochs = 1
    name = "cdcgan" if args.conditional else "dcgan"

    device = common.setup(args.seed, args.threads)
    run = common.RunDir(args.run_dir or common.DEFAULT_RUNS / name)
    images, labels = common.load_mnist_like("train", args.data_dir, limit=args.limit)
    x = common.to_tensor_images(images, device, 0.5, 0.5)  # [-1, 1] like the tanh output
    y = torch.from_numpy(labels).to(device)
    G = Generator(args.latent, args.width, args.conditional).to(device)
    D = Discriminator(args.width, args.conditional).to(device)
    G.apply(init_weights)
    D.apply(init_weights)
    D.reset_projection()
    opt_g = torch.optim.Adam(G.parameters(), lr=args.lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=args.lr, betas=(0.5, 0.999))
    config = {"latent": args.latent, "width": args.width, "conditional": args.conditional}
    start = (
        0
        if args.dry_run
        else common.resume(run.checkpoint, {"G": G, "D": D}, {"G": opt_g, "D": opt_d})
    )
    log = common.MetricsLog(run.metrics_csv, start)
    gen = torch.Generator().manual_seed(args.seed + start)
    fixed_z = torch.randn(100, args.latent, generator=torch.Generator().manual_seed(0)).to(device)
    fixed_y = torch.arange(NUM_CLASSES).repeat_interleave(10).to(device)  # one row per class
    steps = len(x) // args.batch_size
    for epoch in range(start + 1, args.epochs + 1):
        sums, n = np.zeros(4), 0
        for i, idx in enumerate(
            common.progress(
                common.batches(len(x), args.batch_size, True, gen, True),
                steps,
                f"epoch {epoch}",
                args.quiet,
            )
        ):
            real, cls = x[idx], y[idx]
            b = len(idx)
            z = torch.randn(b, args.latent, generator=gen).to(device)
            fake_cls = (
                torch.randint(0, NUM_CLASSES, (b,), generator=gen).to(device)
                if args.conditional
                else None
            )
            fake = G(z, fake_cls)
            # Discriminator: real -> 1 (one-sided smoothing to 0.9), fake -> 0.
            d_real = D(real, cls if args.conditional else None)
            d_fake = D(fake.detach(), fake_cls)
            loss_d = F.binary_cross_entropy_with_logits(
                d_real, torch.full_like(d_real, 0.9)
            ) + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake))
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
            # Generator: non-saturating loss.
            d_gen = D(fake, fake_cls)
            loss_g = F.binary_cross_entropy_with_logits(d_gen, torch.ones_like(d_gen))
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            sums += [
                loss_d.item(),
                loss_g.item(),
                torch.sigmoid(d_real).mean().item(),
                torch.sigmoid(d_fake).mean().item(),
            ]
            n += 1
            if args.dry_run and i >= 4:
                break
        avg = sums / n
        log.log(
            epoch,
            loss_d=float(avg[0]),
            loss_g=float(avg[1]),
            d_real=float(avg[2]),
            d_fake=float(avg[3]),
        )
        common.save_checkpoint(
            run.checkpoint,
            models={"G": G, "D": D},
            optimizers={"G": opt_g, "D": opt_d},
            epoch=epoch,
            config=config,
        )
        G.eval()
        with torch.no_grad():
            grid = common.to_uint8(G(fixed_z, fixed_y if args.conditional else None), 0.5, 0.5)
        G.train()
        common.save_grid(grid, run.path / "samples.png", nrow=10, scale=2)
    common.plot_curves(log, ["loss_d", "loss_g"], run.path / "loss.png", f"{name}: losses")
    return run.checkpoint


if __name__ == "__main__":
    main()
