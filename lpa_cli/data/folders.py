"""Image folders: ``root/<class>/*.png|jpg|...``, read with Pillow a batch at a time.

Classes are the sub-folder names in sorted order. With ``root/train/<class>`` and ``root/test/<class>``
those are the splits; otherwise a seeded split holds out ``test_fraction`` (0.2) of the images.
Images are converted to RGB (``grayscale = true``: one channel), resized to ``size`` x ``size``
and scaled to [0, 1]. Without ``size``, every image is resized to the folder's most common image
size (a warning says so when sizes differ); a most common size above `MAX_DEFAULT_SIDE` pixels a
side is refused until ``size`` is set, so one odd file never decides a huge input. Every file's
header is checked when the task is loaded, so an unreadable image (or a decompression bomb, which
Pillow refuses) stops the run before training starts.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lpa_core.errors import DataError
from lpa_cli.data.batch import Batch
from lpa_cli.config import TaskConfig
from lpa_cli.data.base import Task, check_options, float_option, int_option
from lpa_cli.data.images import seeded_split
from lpa_cli.data.splits import Split

log = logging.getLogger(__name__)
MAX_DEFAULT_SIDE = 1024  # larger images train only at a size the user chooses (task.options.size)
EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
OPTIONS = ("size", "grayscale", "test_fraction")


def _pil():
    try:
        from PIL import Image
    except ImportError:
        raise DataError("image folders need Pillow: pip install 'lpa[images]' (or pip install pillow)") from None
    return Image


def _scan(root: Path) -> tuple[list[Path], list[int], list[str]]:
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files, labels = [], []
    for i, name in enumerate(classes):
        found = sorted(p for p in (root / name).rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file())
        files += found
        labels += [i] * len(found)
    return files, labels, classes


class ImageFolderSplit(Split):
    def __init__(self, files: list[Path], labels: list[int], size: tuple[int, int], grayscale: bool) -> None:
        self.files, self.labels, self.size, self.grayscale = files, torch.tensor(labels, dtype=torch.int64), size, grayscale

    def __len__(self) -> int:
        return len(self.files)

    def _image(self, path: Path) -> np.ndarray:
        Image = _pil()
        try:
            with Image.open(path) as im:
                im = im.convert("L" if self.grayscale else "RGB")
                if im.size != self.size:
                    im = im.resize(self.size, Image.BILINEAR)
                a = np.asarray(im, dtype=np.float32) / 255.0
        except (OSError, ValueError, SyntaxError) as err:
            raise DataError(f"{path}: unreadable image ({err})") from None
        return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)  # (C, H, W)

    def batch(self, index: Tensor) -> Batch:
        x = torch.from_numpy(np.stack([self._image(self.files[i]) for i in index.tolist()]))
        return Batch(x, self.labels[index])


def _verify(files: list[Path]) -> Counter:
    """Every file opens as an image (header only); returns how many images have each (width, height)."""
    Image = _pil()
    sizes: Counter = Counter()
    for f in files:
        try:
            with Image.open(f) as im:
                im.verify()
                sizes[im.size] += 1
        except Exception as err:  # noqa: BLE001 - Pillow reports bad files with many exception types
            raise DataError(f"{f}: unreadable image ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None
    return sizes


def _default_size(root: Path, sizes: Counter) -> tuple[int, int]:
    """The most common image size (the smallest of equally common ones), within `MAX_DEFAULT_SIDE`."""
    size = min(sizes, key=lambda s: (-sizes[s], s[0] * s[1]))
    if max(size) > MAX_DEFAULT_SIDE:
        raise DataError(f"{root}: images are {size[0]}x{size[1]}; lpa does not pick an input that large by itself: "
                        f"set --set task.options.size=N (every image is resized to N x N)")
    if len(sizes) > 1:
        log.warning("%s: images come in %d sizes; every image is resized to %dx%d, the most common (set task.options.size to choose)",
                    root, len(sizes), *size)
    return size


def load_image_folder(source: str, cfg: TaskConfig) -> Task:
    check_options("folder", cfg.options, OPTIONS)
    root = Path(source)
    if not root.is_dir():
        raise DataError(f"{root}: image folder not found")
    grayscale = bool(cfg.options.get("grayscale", False))
    split_dirs = (root / "train").is_dir() and (root / "test").is_dir()
    if split_dirs:
        train_files, train_labels, classes = _scan(root / "train")
        test_files, test_labels, test_classes = _scan(root / "test")
        unknown = sorted(set(test_classes) - set(classes))
        if unknown:
            raise DataError(f"{root}/test: classes {', '.join(unknown)} have no training images")
        test_labels = [classes.index(test_classes[i]) for i in test_labels]
    else:
        files, labels, classes = _scan(root)
        train_files, train_labels, test_files, test_labels = files, labels, [], []
    if len(classes) < 2:
        raise DataError(f"{root}: needs at least two class folders with images (found {len(classes)}: {', '.join(classes) or 'none'})")
    if not train_files:
        raise DataError(f"{root}: no images ({', '.join(sorted(EXTENSIONS))})")
    sizes = _verify(train_files + test_files)
    side = int_option(cfg.options, "size", 0, 0, 4096)
    size = (side, side) if side else _default_size(root, sizes)
    if not split_dirs:
        n = len(train_files)
        n_test = cfg.n_test or max(1, round(n * float_option(cfg.options, "test_fraction", 0.2, 0.0, 1.0)))
        if not 0 < n_test < n:
            raise DataError(f"{root}: {n} images cannot be split into train and test")
        tr, te = seeded_split(n, n_test, cfg.data_seed)
        test_files, test_labels = [train_files[i] for i in te], [train_labels[i] for i in te]
        train_files, train_labels = [train_files[i] for i in tr], [train_labels[i] for i in tr]
    if cfg.n_train:
        train_files, train_labels = train_files[: cfg.n_train], train_labels[: cfg.n_train]
    channels = 1 if grayscale else 3
    return Task(
        name=f"folder:{root}", kind="classification", input_kind="image",
        train=ImageFolderSplit(train_files, train_labels, size, grayscale), test=ImageFolderSplit(test_files, test_labels, size, grayscale),
        out_dim=len(classes), in_shape=(channels, size[1], size[0]),
        description=f"image folder {root.name}: {len(train_files) + len(test_files)} images, {len(classes)} classes",
        meta={"classes": classes, "image_shape": [channels, size[1], size[0]], "source": str(root)},
    )
