"""What the renders miss: real photos beside renders of the same brands, one row per brand.

    python benchmarks/real_vs_renders.py --real PATH [--shards runs/quick/data] \\
        [--out benchmarks/results/real_vs_renders.png] [--per-kind 5]

For every class folder of ``--real`` (``data.real_eval``'s layout) that is a class of the
embedded dataset: ``--per-kind`` web/phone photos, as many surveillance crops (files named
``cctv_*``), then as many renders of that class from ``--shards``' train split (clean labels
only) or, without ``--shards``, freshly rendered with configs/quick.yaml's synth settings.
Real photos are shown, never written anywhere but the PNG: the development set carries no
licence, so keep the sheet out of the repository.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from logo_train.config import load_config
from logo_train.data import brands, synth
from logo_train.data.augment import decode_image
from logo_train.data.shards import iter_batches, read_manifest
from logo_train.real_eval import class_key

ROOT = Path(__file__).resolve().parents[1]
CCTV = "cctv_"


def real_photos(root: Path, per_kind: int) -> dict[str, dict[str, list[np.ndarray]]]:
    """class -> {'web': [...], 'cctv': [...]}, the first files of each kind by name."""
    keys = {class_key(c): c for c in brands.CLASS_NAMES}
    out: dict[str, dict[str, list[np.ndarray]]] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        name = keys.get(class_key(folder.name))
        if name is None:
            continue
        kinds: dict[str, list[np.ndarray]] = {"web": [], "cctv": []}
        for path in sorted(folder.iterdir()):
            kind = "cctv" if path.name.startswith(CCTV) else "web"
            if len(kinds[kind]) < per_kind:
                try:
                    kinds[kind].append(decode_image(path.read_bytes()))
                except ValueError:
                    continue
        out[name] = kinds
    return out


def renders(names: list[str], per_kind: int, shards: str) -> dict[str, list[np.ndarray]]:
    """class -> renders with that clean label."""
    want = {brands.CLASS_NAMES.index(n): n for n in names}
    out: dict[str, list[np.ndarray]] = {n: [] for n in names}
    if shards:
        classes = read_manifest(shards).classes
        for batch in iter_batches(shards, "train", columns=["image", "label", "clean_label"]):
            data = batch.to_pydict()
            for image, clean in zip(data["image"], data["clean_label"], strict=True):
                name = classes[clean]
                if name in out and len(out[name]) < per_kind:
                    out[name].append(decode_image(image))
            if all(len(v) >= per_kind for v in out.values()):
                break
        return out
    cfg = load_config(ROOT / "configs/quick.yaml").data.synth
    cfg = type(cfg)(**{**cfg.__dict__, "image_size": max(cfg.image_size, 96)})
    for sample in synth.make_plan(cfg):
        if sample.split == "train" and sample.clean_label in want:
            name = want[sample.clean_label]
            if len(out[name]) < per_kind:
                out[name].append(decode_image(synth.render_sample(sample, cfg)["image"]))
        if all(len(v) >= per_kind for v in out.values()):
            break
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--real", required=True, help="ImageFolder of real photos")
    p.add_argument("--shards", default="", help="shards to take renders from (default: render)")
    p.add_argument("--per-kind", type=int, default=5)
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/real_vs_renders.png"))
    args = p.parse_args()

    from logo_train.figures import pyplot

    plt = pyplot()

    real = real_photos(Path(args.real), args.per_kind)
    if not real:
        raise SystemExit(f"--real {args.real}: no folder is a class of the embedded dataset")
    made = renders(list(real), args.per_kind, args.shards)
    k = args.per_kind
    cols = 3 * k
    fig, axes = plt.subplots(len(real), cols, figsize=(0.9 * cols + 1.4, 0.95 * len(real) + 0.6))
    axes = np.atleast_2d(axes)
    for row, name in enumerate(real):
        cells = (
            [("web", im) for im in real[name]["web"]]
            + [None] * (k - len(real[name]["web"]))
            + [("cctv", im) for im in real[name]["cctv"]]
            + [None] * (k - len(real[name]["cctv"]))
            + [("render", im) for im in made[name]]
        )
        for col in range(cols):
            ax = axes[row][col]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if col < len(cells) and cells[col] is not None:
                kind, image = cells[col]
                ax.imshow(image)
                if row == 0 and col % k == 0:
                    ax.set_title(kind, fontsize=8)
            if col == 0:
                ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(f"real photos ({args.real}) beside renders, {k} of each kind", fontsize=9)
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    print(f"written: {out}")


if __name__ == "__main__":
    main()
