"""A stand-in for pydcr.data.MTCNN in tests: one face, at fixed points, in every image."""

import numpy as np

from pydcr.data import REFERENCE_112x96


class FakeDetector:
    """Finds one face, at `points`, in every image it is given; `seen` records the images' sizes."""

    def __init__(self, points=REFERENCE_112x96, seen=None):
        self.points = np.asarray(points, np.float32)
        self.seen = [] if seen is None else seen

    def detect(self, image):
        self.seen.append(image.shape[:2])
        box = np.array([[*self.points.min(0), *self.points.max(0)]], np.float32)
        return box, np.ones(1, np.float32), self.points[None]
