"""Image data sets that tests make from real Fashion-MNIST images: a folder of CLASS/ subfolders and a museum-like
metadata table (CSV), as PNG and JPEG files, with a few corrupt files among them."""

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dltrain.data import fashion_mnist

GARMENTS = (0, 1, 5, 7, 8)  # T-shirt/top, Trouser, Sandal, Sneaker, Bag: well apart, so a few epochs learn them
PER_CLASS = 64
DECOYS = ("north wing", "south wing", "attic")  # the decoy column: a gallery, drawn at random
CORRUPT = {"broken-1.png": b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "broken-2.jpg": b"not a jpeg at all",
           "truncated.png": None}  # fmt: skip  # None: a real PNG cut in half


@dataclass(frozen=True)
class ImageSources:
    folder: Path  # CLASS/NAME.png|jpg, plus corrupt files
    manifest: Path  # objects.csv: path (relative), garment, gallery, split; plus rows for the corrupt files
    images: int  # readable images in each
    corrupt: int  # unreadable files in each
    garments: tuple[str, ...]  # the garment names, sorted: the classes labelled by `garment`


def _encoded(image: np.ndarray, form: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image[..., 0], mode="L").save(buffer, format=form, **({"quality": 95} if form == "JPEG" else {}))
    return buffer.getvalue()


def make_image_sources(data_dir: Path, root: Path) -> ImageSources:
    """Write PER_CLASS real training images of each of GARMENTS, alternately PNG and JPEG, as a class folder and
    as a manifest's files (in a flat folder, named by object number), with the corrupt files in both."""
    (images, labels), _ = fashion_mnist.load(data_dir)
    generator = np.random.default_rng(7)
    folder, objects = root / "by_garment", root / "museum" / "objects"
    objects.mkdir(parents=True)
    rows = []
    for label in GARMENTS:
        name = fashion_mnist.CLASS_NAMES[label].replace("/", "-")
        (folder / name).mkdir(parents=True)
        for number, index in enumerate(np.flatnonzero(labels == label)[:PER_CLASS]):
            form, suffix = ("PNG", "png") if number % 2 == 0 else ("JPEG", "jpg")
            data = _encoded(images[index], form)
            (folder / name / f"{index:05d}.{suffix}").write_bytes(data)
            (objects / f"object-{index:05d}.{suffix}").write_bytes(data)
            split = "test" if number % 8 == 7 else "train"
            rows.append([f"objects/object-{index:05d}.{suffix}", name, generator.choice(DECOYS), split])
    for file_name, data in CORRUPT.items():
        if data is None:
            whole = _encoded(images[0], "PNG")
            data = whole[: len(whole) // 2]
        (folder / "Bag" / file_name).write_bytes(data)
        (objects / file_name).write_bytes(data)
        rows.append([f"objects/{file_name}", "Bag", DECOYS[0], "train"])
    manifest = root / "museum" / "objects.csv"
    with manifest.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["path", "garment", "gallery", "split"])
        writer.writerows(rows)
    garments = tuple(sorted(fashion_mnist.CLASS_NAMES[label].replace("/", "-") for label in GARMENTS))
    return ImageSources(folder, manifest, len(GARMENTS) * PER_CLASS, len(CORRUPT), garments)
