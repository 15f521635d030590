"""Build the demo faces shipped in the package (pydcr/demo_data/lfw-demo.pack) from LFW.

    python scripts/make_demo_data.py [--lfw ../shared/data/lfw] [--out pydcr/demo_data/lfw-demo.pack]

People with at least 4 images, up to 10 images each (the first by file name), aligned to 112 x 96
with the five points of lfw_landmark.txt, JPEG quality 85: about 3,900 crops in about 12 MB.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

from pydcr.data import FaceDataset, PackedFaces, pack, read_landmarks

MIN_IMAGES, MAX_IMAGES = 4, 10


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    root = Path(__file__).resolve().parents[1]
    p.add_argument("--lfw", type=Path, default=root.parent / "shared" / "data" / "lfw")
    p.add_argument("--out", type=Path, default=root / "pydcr" / "demo_data" / "lfw-demo.pack")
    args = p.parse_args()
    landmarks = read_landmarks(args.lfw / "lfw_landmark.txt")
    by_person = defaultdict(list)
    for path in sorted(landmarks):
        by_person[path.split("/")[0]].append(path)
    people = sorted(name for name, paths in by_person.items() if len(paths) >= MIN_IMAGES)
    paths, labels = [], []
    for label, name in enumerate(people):
        chosen = by_person[name][:MAX_IMAGES]
        paths += chosen
        labels += [label] * len(chosen)
    dataset = FaceDataset(args.lfw / "lfw", paths, labels, people, landmarks, size=(112, 96))
    out = pack(dataset, args.out, format="jpeg", quality=85)
    with PackedFaces(out) as faces:
        print(f"{out}: {len(faces)} faces of {len(people)} people, {out.stat().st_size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
