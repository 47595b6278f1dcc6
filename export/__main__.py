"""Export trained checkpoints to the bundled model repository.

    python -m export fashion_mlp fashion_cnn          # or: python -m export all
    python -m export espcn_x3 --checkpoint training/runs/espcn_x3/checkpoint.pt --models-dir /tmp/m

Each family writes models/<name>/1/model.onnx, models/<name>/config.yaml (checked by the
service's loader) and models/<name>/card.json; `python -m export.evaluate` then measures every
model through ONNX Runtime and renders models/<name>/README.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from export.families import EXPORTERS, FAMILY_OF, default_checkpoint


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("families", nargs="+", help=f"any of: all, {', '.join(EXPORTERS)}")
    p.add_argument(
        "--checkpoint", default=None, help="only with one family; default its training run"
    )
    p.add_argument("--models-dir", default="models")
    p.add_argument(
        "--data-dir", default=None, help="Fashion-MNIST idx folder (held-out parity inputs)"
    )
    args = p.parse_args(argv)
    families = (
        list(EXPORTERS)
        if args.families == ["all"]
        else [FAMILY_OF.get(f, f) for f in args.families]
    )
    unknown = [f for f in families if f not in EXPORTERS]
    if unknown:
        p.error(
            f"unknown family {unknown}; choose from {list(EXPORTERS)} or a model name {list(FAMILY_OF)}"
        )
    if args.checkpoint and len(families) != 1:
        p.error("--checkpoint needs exactly one family")
    for family in dict.fromkeys(families):
        ckpt = Path(args.checkpoint) if args.checkpoint else default_checkpoint(family)
        if not ckpt.exists():
            print(f"skip {family}: no checkpoint at {ckpt}", file=sys.stderr)
            continue
        EXPORTERS[family](ckpt, Path(args.models_dir), args.data_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
