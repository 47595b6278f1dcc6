"""Train the 2-D-latent VAE on Fashion-MNIST (Bernoulli likelihood, standard normal prior).

python -m training.vae.train --epochs 8
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from training import common
from training.vae.model import VAE


def vae_loss(recon, x, mean, logvar) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(negative ELBO, reconstruction term, KL term), each summed per image and averaged over the batch."""
    rec = F.binary_cross_entropy(recon, x, reduction="sum") / len(x)
    kl = -0.5 * torch.sum(1 + logvar - mean.pow(2) - logvar.exp()) / len(x)
    return rec + kl, rec, kl


@torch.no_grad()
def evaluate(model, x: torch.Tensor) -> dict:
    model.eval()
    elbo, mse = 0.0, 0.0
    for idx in common.batches(len(x), 1000, False):
        mean, logvar = model.encoder(x[idx])
        recon = model.decoder(mean)
        z = mean + torch.randn_like(mean) * torch.exp(0.5 * logvar)
        elbo += vae_loss(model.decoder(z), x[idx], mean, logvar)[0].item() * len(idx)
        mse += F.mse_loss(recon, x[idx], reduction="sum").item()
    model.train()
    return {"test_neg_elbo": elbo / len(x), "test_mse": mse / x.numel()}


def latent_map(
    model, images: torch.Tensor, labels: np.ndarray, path: Path, names: list[str]
) -> None:
    """Test-set posterior means coloured by class, beside decoded images on a 15x15 latent grid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model.eval()
    with torch.no_grad():
        means = torch.cat(
            [model.encoder(images[i])[0] for i in common.batches(len(images), 1000, False)]
        )
        grid = latent_grid(15)
        decoded = common.to_uint8(model.decoder(torch.from_numpy(grid)))
    model.train()
    n = 15
    tiles = decoded.reshape(n, n, 28, 28)[::-1].transpose(0, 2, 1, 3).reshape(n * 28, n * 28)
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 5), dpi=80)
    pts = means.cpu().numpy()
    sc = a.scatter(pts[:, 0], pts[:, 1], c=labels, cmap="tab10", s=2, alpha=0.6)
    a.legend(sc.legend_elements()[0], names, fontsize=7, markerscale=0.8, loc="best")
    a.set_title("test images: posterior means")
    a.set_xlabel("z[0]")
    a.set_ylabel("z[1]")
    b.imshow(tiles, cmap="gray")
    b.set_title("decoder on a grid of latent quantiles")
    b.axis("off")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def latent_grid(n: int) -> np.ndarray:
    """[n*n, 2] latent points at evenly spaced standard-normal quantiles (row-major, z[1] rising)."""
    from statistics import NormalDist

    q = np.array([NormalDist().inv_cdf(p) for p in np.linspace(0.05, 0.95, n)], np.float32)
    zy, zx = np.meshgrid(q, q, indexing="ij")
    return np.stack([zx.ravel(), zy.ravel()], axis=1)


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--run-dir", default=None, help="default training/runs/vae")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.dry_run:
        args.epochs = 1

    device = common.setup(args.seed, args.threads)
    run = common.RunDir(args.run_dir or common.DEFAULT_RUNS / "vae")
    xtr = common.to_tensor_images(
        common.load_mnist_like("train", args.data_dir, limit=args.limit)[0], device
    )
    test_images, test_labels = common.load_mnist_like("test", args.data_dir, limit=args.limit)
    xte = common.to_tensor_images(test_images, device)
    model = VAE().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    steps = (len(xtr) + args.batch_size - 1) // args.batch_size
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(
        opt, T_max=args.epochs * steps, eta_min=args.lr * 0.05
    )
    start = (
        0
        if args.dry_run
        else common.resume(run.checkpoint, {"model": model}, {"opt": opt}, {"sched": sched})
    )
    if start and sched.T_max != args.epochs * steps and start < args.epochs:
        sched = common.anneal_rest(opt, (args.epochs - start) * steps)
    log = common.MetricsLog(run.metrics_csv, start)
    gen = torch.Generator().manual_seed(args.seed + start)
    for epoch in range(start + 1, args.epochs + 1):
        sums, seen = np.zeros(3), 0
        for i, idx in enumerate(
            common.progress(
                common.batches(len(xtr), args.batch_size, True, gen),
                steps,
                f"epoch {epoch}",
                args.quiet,
            )
        ):
            x = xtr[idx]
            recon, mean, logvar = model(x)
            loss, rec, kl = vae_loss(recon, x, mean, logvar)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            sums += np.array([loss.item(), rec.item(), kl.item()]) * len(idx)
            seen += len(idx)
            if args.dry_run and i >= 4:
                break
        avg = sums / seen
        log.log(
            epoch,
            train_neg_elbo=float(avg[0]),
            train_recon=float(avg[1]),
            train_kl=float(avg[2]),
            **evaluate(model, xte),
        )
        common.save_checkpoint(
            run.checkpoint,
            models={"model": model},
            optimizers={"opt": opt},
            schedulers={"sched": sched},
            epoch=epoch,
            config={"latent": 2},
        )
    common.plot_curves(
        log,
        ["train_neg_elbo", "test_neg_elbo"],
        run.path / "loss.png",
        "VAE: negative ELBO (nats per image)",
    )
    latent_map(model, xte, test_labels, run.path / "latent_map.png", common.FASHION_MNIST_LABELS)
    with torch.no_grad():
        model.eval()
        samples = common.to_uint8(
            model.decoder(torch.randn(64, 2, generator=torch.Generator().manual_seed(0)))
        )
    common.save_grid(samples, run.path / "samples.png", nrow=8, scale=2)
    return run.checkpoint


if __name__ == "__main__":
    main()
