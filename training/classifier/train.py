"""Train a Fashion-MNIST classifier (MLP or CNN).

python -m training.classifier.train --arch cnn --epochs 15
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from training import common
from training.classifier.model import build

# Fashion-MNIST training-set statistics; the exported config carries them as input_scaling.
MEAN, STD = 0.2860, 0.3530


def augment(x: torch.Tensor, shift: int, flip: bool, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and +-`shift` pixel translation, vectorised over the batch."""
    n, _, h, w = x.shape
    if flip:
        mask = torch.rand(n, generator=gen) < 0.5
        x = torch.where(mask[:, None, None, None].to(x.device), x.flip(3), x)
    if shift:
        # Pad with the normalised value of a black pixel so shifted-in borders look like background.
        padded = F.pad(x, (shift,) * 4, value=(0.0 - MEAN) / STD)
        dy = torch.randint(0, 2 * shift + 1, (n,), generator=gen).to(x.device)
        dx = torch.randint(0, 2 * shift + 1, (n,), generator=gen).to(x.device)
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, :]
        x = padded[torch.arange(n, device=x.device)[:, None, None], 0, rows, cols].unsqueeze(1)
    return x


@torch.no_grad()
def accuracy(model, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    model.eval()
    correct = 0
    for idx in common.batches(len(x), batch_size, shuffle=False):
        correct += int((model(x[idx]).argmax(1) == y[idx]).sum())
    return correct / len(x)


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--arch", choices=["mlp", "cnn"], default="cnn")
    p.add_argument("--epochs", type=int, default=None, help="default: 30 (mlp), 15 (cnn)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument(
        "--lr", type=float, default=None, help="peak one-cycle LR; default 1e-3 (mlp), 3e-3 (cnn)"
    )
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--data-dir", default=None, help="folder with the four Fashion-MNIST idx .gz files"
    )
    p.add_argument("--limit", type=int, default=None, help="use only the first N train/test images")
    p.add_argument("--run-dir", default=None, help="default training/runs/fashion_<arch>")
    p.add_argument(
        "--dry-run", action="store_true", help="a few batches of one epoch, to check the wiring"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    epochs = args.epochs or (30 if args.arch == "mlp" else 15)
    lr = args.lr or (1e-3 if args.arch == "mlp" else 3e-3)
    if args.dry_run:
        epochs = 1

    device = common.setup(args.seed, args.threads)
    run = common.RunDir(args.run_dir or common.DEFAULT_RUNS / f"fashion_{args.arch}")
    train_x, train_y = common.load_mnist_like("train", args.data_dir, limit=args.limit)
    test_x, test_y = common.load_mnist_like("test", args.data_dir, limit=args.limit)
    xtr = common.to_tensor_images(train_x, device, MEAN, STD)
    ytr = torch.from_numpy(train_y).to(device)
    xte = common.to_tensor_images(test_x, device, MEAN, STD)
    yte = torch.from_numpy(test_y).to(device)

    config = {"arch": args.arch, "mean": MEAN, "std": STD}
    model = build(args.arch).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=args.weight_decay)
    steps_per_epoch = (len(xtr) + args.batch_size - 1) // args.batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, epochs=epochs, steps_per_epoch=steps_per_epoch
    )
    start = (
        0
        if args.dry_run
        else common.resume(run.checkpoint, {"model": model}, {"opt": opt}, {"sched": sched})
    )
    if start and sched.total_steps != epochs * steps_per_epoch and start < epochs:
        sched = common.anneal_rest(opt, (epochs - start) * steps_per_epoch)
    log = common.MetricsLog(run.metrics_csv, start)
    gen = torch.Generator().manual_seed(args.seed + start)
    shift, flip = (2, True) if args.arch == "cnn" else (0, True)

    for epoch in range(start + 1, epochs + 1):
        model.train()
        total, seen = 0.0, 0
        for i, idx in enumerate(
            common.progress(
                common.batches(len(xtr), args.batch_size, True, gen),
                steps_per_epoch,
                f"epoch {epoch}",
                args.quiet,
            )
        ):
            x = augment(xtr[idx], shift, flip, gen)
            loss = F.cross_entropy(model(x), ytr[idx], label_smoothing=args.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            seen += len(idx)
            if args.dry_run and i >= 4:
                break
        log.log(
            epoch,
            train_loss=total / seen,
            test_acc=accuracy(model, xte, yte),
            lr=sched.get_last_lr()[0],
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
        log, ["train_loss"], run.path / "loss.png", f"fashion_{args.arch}: training loss"
    )
    common.plot_curves(
        log,
        ["test_acc"],
        run.path / "accuracy.png",
        f"fashion_{args.arch}: test accuracy",
        ylabel="accuracy",
    )
    return run.checkpoint


if __name__ == "__main__":
    main()
