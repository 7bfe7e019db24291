"""Write the CIFAR-10 subset that ``.gpu/go.sh`` reads: ``.gpu_data/cifar10-subset.npz`` (git-ignored).

The device machine has no internet and receives only the working tree plus the paths named in ``carry``
(64 MiB in all), so the real-data part of the GPU script gets a small subset in the ``.npz`` layout that
``dartsnas.data.cifar.load_cifar10`` reads: the first ``--train`` training images and ``--test`` test images
of the shared CIFAR-10 copy (default 5,120 + 1,000 images, about 19 MB).

    python .gpu/prepare_data.py                       # from $DARTSNAS_DATA or ../shared/data
    python .gpu/prepare_data.py --source /path/to/cifar-10-batches-py
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from dartsnas.data.cifar import load_cifar10


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", default=None, help="CIFAR-10 python batches (default: shared data)")
    p.add_argument("--train", type=int, default=5120)
    p.add_argument("--test", type=int, default=1000)
    p.add_argument("--out", default=str(ROOT / ".gpu_data" / "cifar10-subset.npz"))
    a = p.parse_args()
    source = a.source
    if source is None:
        base = Path(os.environ.get("DARTSNAS_DATA", ROOT.parent / "shared" / "data"))
        source = base / "cifar10"
    tx, ty, vx, vy = load_cifar10(Path(source))
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        out,
        train_data=tx[: a.train].reshape(-1, 3072).numpy(),
        train_labels=ty[: a.train].numpy(),
        test_data=vx[: a.test].reshape(-1, 3072).numpy(),
        test_labels=vy[: a.test].numpy(),
    )
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB): {a.train} training and {a.test} test images")


if __name__ == "__main__":
    main()
