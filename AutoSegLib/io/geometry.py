"""The geometry record that travels with every image array.

Arrays are channel-first and spatial axes are in numpy/SimpleITK array order: (z, y, x) for 3D,
(y, x) for 2D. `Geometry.spacing` is in that same array order. `origin` and `direction` are the
physical (LPS, millimetre) values exactly as ITK stores them: origin is the (x, y, z) position of the
first voxel, direction is the ITK direction matrix flattened row-major, whose columns are the physical
directions of the ITK index axes (i, j, k) = array axes reversed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import numpy as np


@dataclass(frozen=True)
class Geometry:
    spacing: Tuple[float, ...]
    origin: Tuple[float, ...]
    direction: Tuple[float, ...]

    def __post_init__(self):
        n = len(self.spacing)
        if n not in (2, 3) or len(self.origin) != n or len(self.direction) != n * n:
            raise ValueError(f"inconsistent geometry: spacing {self.spacing}, origin {self.origin}, "
                             f"direction {self.direction}")
        object.__setattr__(self, "spacing", tuple(float(s) for s in self.spacing))
        object.__setattr__(self, "origin", tuple(float(s) for s in self.origin))
        object.__setattr__(self, "direction", tuple(float(s) for s in self.direction))

    @property
    def ndim(self) -> int:
        return len(self.spacing)

    @property
    def is_2d(self) -> bool:
        return self.ndim == 2

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.array(self.direction, dtype=float).reshape(self.ndim, self.ndim)

    @property
    def spacing_xyz(self) -> Tuple[float, ...]:
        """Spacing in ITK index order (x, y, z)."""
        return tuple(reversed(self.spacing))

    def index_to_physical_matrix(self) -> np.ndarray:
        """4x4 (3x3 for 2D) homogeneous matrix from ITK index (i, j, k) to LPS physical point."""
        n = self.ndim
        m = np.eye(n + 1)
        m[:n, :n] = self.direction_matrix @ np.diag(self.spacing_xyz)
        m[:n, n] = self.origin
        return m

    def is_close(self, other: "Geometry", rtol: float = 1e-4, atol: float = 1e-4) -> bool:
        """True when both describe the same grid up to float noise (NIfTI keeps float32)."""
        return (self.ndim == other.ndim
                and np.allclose(self.spacing, other.spacing, rtol=rtol, atol=atol)
                and np.allclose(self.origin, other.origin, rtol=rtol, atol=max(atol, 1e-3))
                and np.allclose(self.direction, other.direction, atol=1e-4))

    def describe_difference(self, other: "Geometry") -> str:
        """Human-readable description of how ``other`` differs from ``self`` ('' when close)."""
        if self.ndim != other.ndim:
            return f"dimension {other.ndim}D differs from {self.ndim}D"
        parts = []
        if not np.allclose(self.spacing, other.spacing, rtol=1e-4, atol=1e-4):
            parts.append(f"spacing {_fmt(other.spacing)} differs from {_fmt(self.spacing)}")
        if not np.allclose(self.origin, other.origin, rtol=1e-4, atol=1e-3):
            parts.append(f"origin {_fmt(other.origin)} differs from {_fmt(self.origin)}")
        if not np.allclose(self.direction, other.direction, atol=1e-4):
            parts.append(f"direction {_fmt(other.direction)} differs from {_fmt(self.direction)}")
        return "; ".join(parts)

    def to_dict(self) -> dict:
        return {"spacing": list(self.spacing), "origin": list(self.origin), "direction": list(self.direction)}

    @classmethod
    def from_dict(cls, d: dict) -> "Geometry":
        return cls(tuple(d["spacing"]), tuple(d["origin"]), tuple(d["direction"]))

    @classmethod
    def from_sitk(cls, image) -> "Geometry":
        return cls(tuple(reversed(image.GetSpacing())), tuple(image.GetOrigin()), tuple(image.GetDirection()))

    def apply_to_sitk(self, image) -> None:
        image.SetSpacing(self.spacing_xyz)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)

    @classmethod
    def identity(cls, spacing) -> "Geometry":
        n = len(spacing)
        return cls(tuple(spacing), (0.0,) * n, tuple(np.eye(n).ravel()))


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"
