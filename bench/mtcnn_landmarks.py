"""MTCNN's landmarks against LFW's published MTCNN landmark list, with its speed.

    python -m bench.mtcnn_landmarks [--lfw PATH] [--every 6] [--device cpu]

For every n-th LFW image (sorted by path): detect, take the face nearest the image centre, and
measure the Euclidean error of each of its five points against lfw_landmark.txt.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from bench.data import DEFAULT_LFW
from pydcr.data import MTCNN, read_image, read_landmarks
from pydcr.data.mtcnn import central_face


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lfw", type=Path, default=DEFAULT_LFW)
    p.add_argument("--every", type=int, default=6, help="take every n-th image (default 6)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    listed = read_landmarks(args.lfw / "lfw_landmark.txt")
    names = sorted(listed)[:: args.every]
    detector = MTCNN(args.device)
    errors, missed, elapsed = [], 0, 0.0
    for name in names:
        image = read_image(args.lfw / "lfw" / name)
        start = time.perf_counter()
        boxes, _, points = detector.detect(image)
        elapsed += time.perf_counter() - start
        face = central_face(boxes, image.shape)
        if face is None:
            missed += 1
            continue
        errors.append(np.linalg.norm(points[face] - listed[name], axis=1))
    e = np.array(errors)
    print(f"images {len(names)}, no face {missed}, detect {len(names) / elapsed:.1f} img/s on {args.device}")
    print(
        f"point error: median {np.median(e):.2f} px, 95th percentile {np.percentile(e, 95):.2f} px, "
        f"99th percentile {np.percentile(e, 99):.2f} px"
    )


if __name__ == "__main__":
    main()
