"""Synthetic face-like embeddings for tests and benchmarks (no faces involved).

Identities are unit vectors spread around a few dozen "group" directions (people of a
similar look are closer to each other than to strangers); each embedding of an identity
is its centre plus isotropic noise, renormalised. With the defaults two samples of one
identity have cosine ~0.6, two identities of one group ~0.2 and strangers ~0, which is
roughly how ArcFace/FaceNet-style embeddings of real faces behave.

Everything is a pure function of (seed, identity, sample), so a test can regenerate the
vectors of any citizen without keeping them.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

#: group directions; 64 gives many identities per group, i.e. near neighbours that matter
GROUPS = 64
#: weight of the group direction in an identity centre: cos between identities of one
#: group ~= w^2 / (1 + w^2) ~ 0.2 at 0.5
GROUP_WEIGHT = 0.5
#: per-sample noise: cos(sample, centre) ~= 1 / sqrt(1 + s^2) ~ 0.78 at 0.8, so two
#: samples of one person have cos ~0.6 like two photos from different visits
NOISE = 0.8
#: sample numbers from here on are "new photos" (queries), never enrolled
QUERY_BASE = 1_000_000


def _unit(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


class ClusteredFaces:
    """Deterministic clustered embeddings of ``dim`` dimensions."""

    def __init__(self, dim: int = 512, seed: int = 0, noise: float = NOISE) -> None:
        self.dim = dim
        self.seed = seed
        self.noise = noise
        rng = np.random.default_rng([seed, 0xFACE])
        self._groups = _unit(rng.standard_normal((GROUPS, dim)))

    def centre(self, identity: int) -> npt.NDArray[np.float64]:
        rng = np.random.default_rng([self.seed, identity])
        group = int(rng.integers(GROUPS))
        own = _unit(rng.standard_normal(self.dim))
        return _unit(GROUP_WEIGHT * self._groups[group] + own)

    def samples(self, identity: int, numbers: range | list[int]) -> npt.NDArray[np.float32]:
        """Embeddings ``numbers`` of one identity, shape (len(numbers), dim), unit rows."""
        c = self.centre(identity)
        out = np.empty((len(numbers), self.dim), dtype=np.float32)
        for row, j in enumerate(numbers):
            rng = np.random.default_rng([self.seed, identity, j + 1])
            noise = rng.standard_normal(self.dim) * (self.noise / np.sqrt(self.dim))
            out[row] = _unit(c + noise)
        return out

    def enrolled_count(self, identity: int, most: int) -> int:
        """How many embeddings this identity has (1..most, deterministic)."""
        if most <= 1:
            return 1
        rng = np.random.default_rng([self.seed, identity, 0])
        return int(rng.integers(1, most + 1))

    def enrolled(self, identity: int, most: int = 1) -> npt.NDArray[np.float32]:
        return self.samples(identity, range(self.enrolled_count(identity, most)))

    def query(self, identity: int, number: int = 0) -> npt.NDArray[np.float32]:
        """A new photo of ``identity`` (never one of its enrolled samples)."""
        return self.samples(identity, [QUERY_BASE + number])[0]
