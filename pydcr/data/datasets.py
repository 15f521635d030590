"""Face datasets: an identity-per-folder tree (CASIA-WebFace), LFW with its View 2 pairs, and SCface.

Every dataset is a list of images (paths relative to its image root), an integer label per image,
the identity names the labels index, and optionally five-point landmarks per image. Indexing gives
the aligned crop and its label, ready for a DataLoader or for ``pydcr pack``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch.utils.data

from .align import align
from .image import read_image
from .landmarks import read_landmarks

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")

Landmarks = str | os.PathLike | Mapping[str, np.ndarray] | None
LFW_LANDMARKS = "lfw_landmark.txt"


class FaceDataset(torch.utils.data.Dataset):
    """Images with identity labels and (optional) landmarks; ``dataset[i]`` is (aligned crop, label).

    image_root: the folder the paths are relative to. paths: one per image, "/"-separated.
    labels: index into classes, one per image. landmarks: a mapping from path to its 5 x 2 points,
    or a landmark list file (read with :func:`read_landmarks`), or None. size: (h, w) of the crops.
    """

    def __init__(
        self,
        image_root: str | os.PathLike,
        paths: Sequence[str],
        labels: Sequence[int] | np.ndarray,
        classes: Sequence[str],
        landmarks: Landmarks = None,
        size: Sequence[int] = (112, 96),
    ) -> None:
        if len(paths) != len(labels):
            raise ValueError(f"got {len(paths)} paths but {len(labels)} labels")
        self.image_root = Path(image_root)
        self.paths = list(paths)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.classes = list(classes)
        self.landmarks = load_landmarks(landmarks, self.image_root)
        self.size = (int(size[0]), int(size[1]))

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        points = self.landmarks_of(index)
        if points is None:
            raise KeyError(
                f"no landmarks for {self.paths[index]} (under {self.image_root}): "
                "give a landmark list, or compute one with `pydcr align`"
            )
        return align(self.image(index), points, self.size), int(self.labels[index])

    def path(self, index: int) -> Path:
        return self.image_root / self.paths[index]

    def image(self, index: int) -> np.ndarray:
        """The decoded, unaligned image: H x W x 3 uint8 RGB."""
        return read_image(self.path(index))

    def landmarks_of(self, index: int) -> np.ndarray | None:
        return None if self.landmarks is None else self.landmarks.get(self.paths[index])

    @property
    def identities(self) -> list[str | None]:
        """The identity name of each image (None for the unlabelled images of a flat folder)."""
        return identity_names(self.classes, self.labels)


def identity_names(classes: list[str], labels) -> list[str | None]:
    """classes[label] for each label; None for -1, an image without identity."""
    return [classes[label] if label >= 0 else None for label in labels]


class FaceArrays(torch.utils.data.Dataset):
    """Decoded crops held in memory: items are (h x w x 3 uint8, label), as a pack's are."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return self.images[i], int(self.labels[i])


class IdentityFolder(FaceDataset):
    """One folder per identity (``root/<identity>/<image>``, the CASIA-WebFace layout).

    Identities are sorted by name and labelled 0, 1, ...; images are sorted within each. Files that
    are not images (by extension), hidden files and folders (".*", "__MACOSX": notebook checkpoints,
    macOS metadata) and folders without images are ignored. landmarks: a list with paths relative
    to root.
    """

    def __init__(self, root: str | os.PathLike, landmarks: Landmarks = None, size: Sequence[int] = (112, 96)) -> None:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"no such dataset folder: {root}")
        files = {name: _image_files(root / name) for name in _subfolders(root)}
        classes = [name for name in files if files[name]]  # a folder without images is no identity
        paths, labels = [], []
        for label, name in enumerate(classes):
            paths += [f"{name}/{f}" for f in files[name]]
            labels += [label] * len(files[name])
        super().__init__(root, paths, labels, classes, landmarks, size)


class FlatFolder(FaceDataset):
    """A folder of images with no identities (``root/<image>``): a gallery or probe set to align,
    pack or embed. Images are sorted by name; every label is -1 and ``classes`` is empty."""

    def __init__(self, root: str | os.PathLike, landmarks: Landmarks = None, size: Sequence[int] = (112, 96)) -> None:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"no such dataset folder: {root}")
        paths = _image_files(root)
        super().__init__(root, paths, [-1] * len(paths), [], landmarks, size)


@dataclass(frozen=True)
class Pairs:
    """Verification pairs: image indices into the dataset, whether they show the same person, and the fold."""

    first: np.ndarray
    second: np.ndarray
    same: np.ndarray
    fold: np.ndarray

    def __len__(self) -> int:
        return len(self.first)

    @property
    def num_folds(self) -> int:
        return int(self.fold.max()) + 1 if len(self.fold) else 0


class LFW(IdentityFolder):
    """Labeled Faces in the Wild: ``root/lfw/<Name>/<Name>_NNNN.jpg``, with its protocol files.

    pairs: a pairs file relative to root (View 2 ``pairs.txt``: 10 folds of 300 matched then 300
    mismatched pairs; View 1 ``pairsDevTrain.txt``/``pairsDevTest.txt`` read as one fold), or None.
    landmarks: a landmark list (a relative path is looked for under root first, then as given;
    default ``lfw_landmark.txt``, skipped when absent), a mapping, or None.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        pairs: str | os.PathLike | None = "pairs.txt",
        landmarks: Landmarks = LFW_LANDMARKS,
        size: Sequence[int] = (112, 96),
    ) -> None:
        root = Path(root)
        if isinstance(landmarks, (str, os.PathLike)):
            path = Path(landmarks)
            if not path.is_absolute() and (root / path).is_file():  # under the LFW root first, as the default is
                path = root / path
            landmarks = None if landmarks == LFW_LANDMARKS and not path.is_file() else path
        super().__init__(root / "lfw", landmarks, size)
        self.root = root
        self._index = {p: i for i, p in enumerate(self.paths)}
        self.pairs = read_pairs(root / pairs, self._index) if pairs is not None else None

    def check_folds(self, folds: Iterable[int]) -> list[int]:
        """`folds` sorted, each once; a ValueError for one the pairs file does not have (numbered from 0)."""
        folds = sorted({int(f) for f in folds})
        num_folds = 0 if self.pairs is None else self.pairs.num_folds
        if folds and (folds[0] < 0 or folds[-1] >= num_folds):
            raise ValueError(f"folds must lie in [0, {num_folds}) (numbered from 0), got {folds}"
                             + ("" if self.pairs is not None else f": {self.root} was read without a pairs file"))
        return folds

    def fold_identities(self, folds: Iterable[int]) -> set[str]:
        """The names of everyone in the pairs of the given folds (to keep them out of training).
        Folds are numbered from 0, as ``pairs.fold`` numbers them: View 2's folds 6-10, in the
        command line's numbering, are 5-9 here. A fold the pairs file does not have is a ValueError,
        not an empty set: people it was meant to keep out of training would train."""
        folds = self.check_folds(folds)
        if self.pairs is None:
            return set()
        chosen = np.isin(self.pairs.fold, folds)
        images = np.concatenate([self.pairs.first[chosen], self.pairs.second[chosen]])
        return {self.classes[self.labels[i]] for i in images}


def read_pairs(path: str | os.PathLike, index: Mapping[str, int]) -> Pairs:
    """Parse an LFW pairs file into image indices (index maps "Name/Name_NNNN.jpg" to a dataset index)."""
    with open(path, encoding="utf-8") as f:
        lines = [line.split() for line in f if line.strip()]
    if not lines:
        raise ValueError(f"{path}: empty pairs file")
    header = [int(v) for v in lines[0]]
    folds, per_fold = (header[0], header[1]) if len(header) == 2 else (1, header[0])
    body = lines[1:]
    if len(body) != folds * 2 * per_fold:
        raise ValueError(f"{path}: header announces {folds} x 2 x {per_fold} pairs, found {len(body)}")
    first, second, same, fold = [], [], [], []
    for number, fields in enumerate(body, 2):
        if len(fields) == 3:
            a, b = image_name(fields[0], fields[1]), image_name(fields[0], fields[2])
        elif len(fields) == 4:
            a, b = image_name(fields[0], fields[1]), image_name(fields[2], fields[3])
        else:
            raise ValueError(f"{path}:{number}: expected 3 or 4 fields, got {len(fields)}")
        for name in (a, b):
            if name not in index:
                raise ValueError(f"{path}:{number}: {name} is not in the dataset")
        position = number - 2
        first.append(index[a])
        second.append(index[b])
        same.append(len(fields) == 3)
        fold.append(position // (2 * per_fold))
    return Pairs(*(np.asarray(v) for v in (first, second, same, fold)))


def image_name(person: str, number: str) -> str:
    return f"{person}/{person}_{int(number):04d}.jpg"


class SCface(FaceDataset):
    """SCface (Grgic et al. 2011): a frontal mugshot gallery and five surveillance cameras at three distances.

    Files are found anywhere under root by their published names: ``<id>_frontal.JPG`` (the mugshot
    gallery, e.g. in ``mugshot_frontal_cropped_all/``) and ``<id>_cam<c>_<d>.jpg`` for cameras
    c = 1..5 and distances d = 1 (4.20 m), 2 (2.60 m), 3 (1.00 m) (e.g. in
    ``surveillance_cameras_all/`` or ``surveillance_cameras_distance_<d>/cam<c>/``). Other files (the
    infrared cameras 6 and 7, rotated mugshots) are ignored; a file name seen twice counts once.

    The subjects are split at random (by seed) into train_subjects for fine-tuning and PCA and the
    rest for testing, as in the DCR paper (50 / 80).
    """

    DISTANCES_M = {1: 4.20, 2: 2.60, 3: 1.00}
    CAMERAS = (1, 2, 3, 4, 5)
    _MUGSHOT = re.compile(r"^(\d+)_frontal\.jpe?g$", re.IGNORECASE)
    _SURVEILLANCE = re.compile(r"^(\d+)_cam([1-5])_([1-3])\.jpe?g$", re.IGNORECASE)

    def __init__(
        self,
        root: str | os.PathLike,
        seed: int = 0,
        train_subjects: int = 50,
        landmarks: Landmarks = None,
        size: Sequence[int] = (112, 96),
    ) -> None:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"no such dataset folder: {root}")
        files = self._find(root)
        subjects = sorted({subject for subject, *_ in files.values()})
        if not subjects:
            raise ValueError(f"no SCface images (<id>_frontal.JPG, <id>_cam<c>_<d>.jpg) under {root}")
        if not 0 <= train_subjects < len(subjects):
            raise ValueError(
                f"train_subjects must be in [0, {len(subjects)}) for {len(subjects)} subjects, got {train_subjects}"
            )
        label = {s: i for i, s in enumerate(subjects)}
        paths = sorted(files, key=lambda p: (files[p], p))
        super().__init__(root, paths, [label[files[p][0]] for p in paths], subjects, landmarks, size)
        self.camera = np.array([files[p][1] for p in paths], dtype=np.int64)  # 0: the mugshot
        self.distance = np.array([files[p][2] for p in paths], dtype=np.int64)  # 0: the mugshot
        order = np.random.default_rng(seed).permutation(len(subjects))
        self.train_subjects = sorted(subjects[i] for i in order[:train_subjects])
        self.test_subjects = sorted(subjects[i] for i in order[train_subjects:])

    def _find(self, root: Path) -> dict[str, tuple[str, int, int]]:
        found: dict[str, tuple[str, int, int]] = {}
        seen: set[str] = set()
        for f in sorted(root.rglob("*")):
            key = f.name.lower()
            if key in seen or not f.is_file():
                continue
            if m := self._MUGSHOT.match(f.name):
                found[f.relative_to(root).as_posix()] = (m[1], 0, 0)
            elif m := self._SURVEILLANCE.match(f.name):
                found[f.relative_to(root).as_posix()] = (m[1], int(m[2]), int(m[3]))
            else:
                continue
            seen.add(key)
        return found

    def _subjects(self, split: str) -> np.ndarray:
        names = {"train": self.train_subjects, "test": self.test_subjects, "all": self.classes}.get(split)
        if names is None:
            raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
        return np.isin(self.labels, [self.classes.index(n) for n in names])

    def gallery(self, split: str = "test") -> np.ndarray:
        """Indices of the frontal mugshots of the split's subjects."""
        return np.flatnonzero(self._subjects(split) & (self.camera == 0))

    def probes(self, distance: int, split: str = "test", cameras: Iterable[int] = CAMERAS) -> np.ndarray:
        """Indices of the surveillance images of the split's subjects at one distance (1, 2 or 3)."""
        if distance not in self.DISTANCES_M:
            raise ValueError(f"distance must be 1 (4.20 m), 2 (2.60 m) or 3 (1.00 m), got {distance}")
        return np.flatnonzero(self._subjects(split) & (self.distance == distance) & np.isin(self.camera, list(cameras)))


def load_landmarks(landmarks: Landmarks, root: Path) -> dict[str, np.ndarray] | None:
    """A landmark mapping from a mapping, a list file (relative paths are taken under root first), or None."""
    if landmarks is None:
        return None
    if isinstance(landmarks, Mapping):
        return {str(k): np.asarray(v, dtype=np.float32) for k, v in landmarks.items()}
    path = Path(landmarks)
    if not path.is_absolute() and (root / path).is_file():
        path = root / path
    return read_landmarks(path)


LAYOUTS = ("auto", "lfw", "folder", "flat", "scface")


class MixedLayoutError(ValueError):
    """A folder the "auto" layout cannot read whole: loose images beside folders of images."""

    def __init__(self, root: Path):
        self.root = root
        super().__init__(f"{root} holds images and folders of images, and no layout reads both: choose one "
                         "(folder: one subfolder per identity, the loose images left out; flat: the loose "
                         "images only), or move the loose images into a folder of their own")


def open_dataset(
    root: str | os.PathLike, layout: str = "auto", landmarks: Landmarks = None, size: Sequence[int] = (112, 96)
) -> FaceDataset:
    """A dataset by layout name: "lfw", "folder" (one folder per identity), "flat" (images with no
    identities, directly under root), "scface" (any number of subjects, all in the test split: for
    the evaluation's split, construct :class:`SCface` itself), or "auto" (LFW when root has an
    ``lfw/`` folder, else an identity folder when root has a subfolder with images, else flat; a root
    with loose images beside such subfolders is a MixedLayoutError, as neither reading takes them all). landmarks: a
    list or mapping; for LFW, None means its own ``lfw_landmark.txt`` when present."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no such dataset folder: {root}")
    if layout == "auto":
        layout = "lfw" if (root / "lfw").is_dir() else "folder" if _has_image_folder(root) else "flat"
        if layout == "folder" and _image_files(root):  # either reading would leave images out unsaid
            raise MixedLayoutError(root)
    if layout == "lfw":
        return LFW(root, pairs=None, landmarks=LFW_LANDMARKS if landmarks is None else landmarks, size=size)
    if layout == "folder":
        return IdentityFolder(root, landmarks, size)
    if layout == "flat":
        return FlatFolder(root, landmarks, size)
    if layout == "scface":  # every subject: the evaluation's train / test split is not the listing's business
        return SCface(root, train_subjects=0, landmarks=landmarks, size=size)
    raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")


def _hidden(name: str) -> bool:
    """Names no dataset means: hidden files and folders (".ipynb_checkpoints", macOS "._x.jpg")
    and macOS archives' "__MACOSX"."""
    return name.startswith(".") or name == "__MACOSX"


def _subfolders(root: Path) -> list[str]:
    """The names of the visible folders directly in root, sorted (scandir: no stat per entry)."""
    with os.scandir(root) as entries:
        return sorted(e.name for e in entries if e.is_dir() and not _hidden(e.name))


def _has_image_folder(root: Path) -> bool:
    return any(_image_files(root / name) for name in _subfolders(root))


def _image_files(folder: Path) -> list[str]:
    """The names of the visible image files (by extension) directly in folder, sorted."""
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries
                      if e.is_file() and not _hidden(e.name) and Path(e.name).suffix.lower() in IMAGE_EXTENSIONS)
