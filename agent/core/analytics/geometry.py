"""Plane geometry for counting rules, in normalized image coordinates (x right, y down, [0, 1]).

Anchor points of boxes, validated directional lines and polygons, which side of a line a point
lies on (with the reach of each side inside the frame, so a hysteresis band near the frame edge
stays reachable), where a path crosses a line, and point-in-polygon with distance to the boundary.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Point = tuple[float, float]
FloatArray = npt.NDArray[np.float64]


class GeometryError(ValueError):
    """A line or polygon given to a counting rule is not usable; the message names what is wrong."""


class Anchor(str, enum.Enum):
    """Which point of a box stands for the object when it crosses a line or enters a zone."""

    BOTTOM_CENTER = "bottom-center"
    CENTER = "center"
    TOP_CENTER = "top-center"
    LEFT_CENTER = "left-center"
    RIGHT_CENTER = "right-center"


# (weight of x1, weight of x2) and (weight of y1, weight of y2) per anchor.
_ANCHOR_WEIGHTS: dict[Anchor, tuple[float, float, float, float]] = {
    Anchor.BOTTOM_CENTER: (0.5, 0.5, 0.0, 1.0),
    Anchor.CENTER: (0.5, 0.5, 0.5, 0.5),
    Anchor.TOP_CENTER: (0.5, 0.5, 1.0, 0.0),
    Anchor.LEFT_CENTER: (1.0, 0.0, 0.5, 0.5),
    Anchor.RIGHT_CENTER: (0.0, 1.0, 0.5, 0.5),
}


def anchor_points(boxes: FloatArray, anchor: Anchor) -> FloatArray:
    """The anchor of each ``(x1, y1, x2, y2)`` row of ``boxes`` as an ``(n, 2)`` array, clipped to [0, 1]."""
    ax1, ax2, ay1, ay2 = _ANCHOR_WEIGHTS[anchor]
    out = np.empty((boxes.shape[0], 2), dtype=np.float64)
    out[:, 0] = ax1 * boxes[:, 0] + ax2 * boxes[:, 2]
    out[:, 1] = ay1 * boxes[:, 1] + ay2 * boxes[:, 3]
    np.clip(out, 0.0, 1.0, out=out)
    return out


def _check_point(what: str, index: int, point: Sequence[float]) -> Point:
    if len(point) != 2:
        raise GeometryError(f"{what}: point {index} has {len(point)} coordinates, expected 2 (x, y)")
    x, y = float(point[0]), float(point[1])
    for axis, value in (("x", x), ("y", y)):
        if not math.isfinite(value) or not 0.0 <= value <= 1.0:
            raise GeometryError(
                f"{what}: point {index} {axis} = {value} is outside [0, 1] (coordinates are normalized)"
            )
    return (x, y)


def _cross(o: Point, a: Point, b: Point) -> float:
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


# A cross product this small is a point on the line: coordinates written with a few decimals
# (0.64, 0.28 on the segment from 0.1, 0.1 to 0.7, 0.3) give about 1e-17 instead of 0.
COLLINEAR = 1e-12


def _snap(d: float) -> float:
    return 0.0 if abs(d) <= COLLINEAR else d


def _segments_intersect(p1: Point, p2: Point, q1: Point, q2: Point) -> bool:
    """True when closed segments p1p2 and q1q2 share a point (collinear overlaps included)."""
    d1, d2 = _snap(_cross(q1, q2, p1)), _snap(_cross(q1, q2, p2))
    d3, d4 = _snap(_cross(p1, p2, q1)), _snap(_cross(p1, p2, q2))
    if ((d1 > 0) != (d2 > 0)) and d1 != 0 and d2 != 0 and ((d3 > 0) != (d4 > 0)) and d3 != 0 and d4 != 0:
        return True

    def on(a: Point, b: Point, c: Point, d: float) -> bool:
        return d == 0 and min(a[0], b[0]) <= c[0] <= max(a[0], b[0]) and min(a[1], b[1]) <= c[1] <= max(
            a[1], b[1]
        )

    return on(q1, q2, p1, d1) or on(q1, q2, p2, d2) or on(p1, p2, q1, d3) or on(p1, p2, q2, d4)


@dataclass(frozen=True)
class Line:
    """A directed segment P1 -> P2. ``in`` is the side where (P2 - P1) x (A - P1) > 0 (x right, y down)."""

    p1: Point
    p2: Point

    @classmethod
    def of(cls, what: str, points: Sequence[Sequence[float]]) -> Line:
        """A validated line from two ``[x, y]`` points; ``what`` names it in the error."""
        if len(points) != 2:
            raise GeometryError(f"{what}: a line has exactly 2 points, got {len(points)}")
        p1, p2 = (_check_point(what, i, p) for i, p in enumerate(points))
        if math.dist(p1, p2) < 1e-6:
            raise GeometryError(f"{what}: the two points are the same {p1}; a line needs two distinct points")
        return cls(p1, p2)

    @property
    def length(self) -> float:
        return math.dist(self.p1, self.p2)

    def signed_distances(self, points: FloatArray) -> FloatArray:
        """Signed distance of each ``(x, y)`` row to the infinite line; positive on the ``in`` side."""
        dx, dy = self.p2[0] - self.p1[0], self.p2[1] - self.p1[1]
        cross = dx * (points[:, 1] - self.p1[1]) - dy * (points[:, 0] - self.p1[0])
        result: FloatArray = cross / self.length
        return result

    def side_reach(self) -> tuple[float, float]:
        """How far into the unit square each side reaches: (deepest ``in``, deepest ``out``) distance."""
        corners = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
        d = self.signed_distances(corners)
        return max(0.0, float(d.max())), max(0.0, float(-d.min()))

    def crossing_parameter(self, a: Point, b: Point) -> float | None:
        """Where path a -> b meets the infinite line, as a fraction along P1 -> P2 (0 at P1, 1 at P2).

        None when the path is parallel to the line. The caller decides whether the fraction lies
        on the segment; a path that passes the line's extension gives a value outside [0, 1].
        """
        rx, ry = self.p2[0] - self.p1[0], self.p2[1] - self.p1[1]
        sx, sy = b[0] - a[0], b[1] - a[1]
        denom = rx * sy - ry * sx
        if abs(denom) < 1e-12:
            return None
        qx, qy = a[0] - self.p1[0], a[1] - self.p1[1]
        return (qx * sy - qy * sx) / denom


@dataclass(frozen=True)
class Polygon:
    """A simple (not self-intersecting) polygon with at least 3 vertices inside the unit square."""

    vertices: tuple[Point, ...]

    @classmethod
    def of(cls, what: str, points: Sequence[Sequence[float]]) -> Polygon:
        """A validated polygon; ``what`` names it in the error (GeometryError says which check failed)."""
        if len(points) < 3:
            raise GeometryError(f"{what}: a zone polygon needs at least 3 points, got {len(points)}")
        vertices = tuple(_check_point(what, i, p) for i, p in enumerate(points))
        n = len(vertices)
        for i in range(n):
            if math.dist(vertices[i], vertices[(i + 1) % n]) < 1e-9:
                raise GeometryError(f"{what}: points {i} and {(i + 1) % n} are the same; drop one")
        for i in range(n):
            for j in range(i + 1, n):
                if j == i + 1 or (i == 0 and j == n - 1):
                    continue  # neighbouring edges share a vertex by construction
                edge_i, edge_j = (vertices[i], vertices[(i + 1) % n]), (vertices[j], vertices[(j + 1) % n])
                if _segments_intersect(*edge_i, *edge_j):
                    raise GeometryError(
                        f"{what}: the polygon is self-intersecting (edge {i}-{(i + 1) % n} crosses edge "
                        f"{j}-{(j + 1) % n}); list the points in order around the zone"
                    )
        area2 = sum(_cross((0.0, 0.0), vertices[i], vertices[(i + 1) % n]) for i in range(n))
        if abs(area2) < 1e-9:
            raise GeometryError(f"{what}: the polygon has no area (all points on one line)")
        return cls(vertices)

    def contains(self, points: FloatArray) -> npt.NDArray[np.bool_]:
        """Whether each ``(x, y)`` row lies inside (even-odd rule; a point on an edge may go either way)."""
        x, y = points[:, 0], points[:, 1]
        inside = np.zeros(points.shape[0], dtype=bool)
        verts = self.vertices
        n = len(verts)
        for i in range(n):
            (xi, yi), (xj, yj) = verts[i], verts[i - 1]
            if yi == yj:
                continue
            straddles = (yi > y) != (yj > y)
            x_at = (xj - xi) * (y - yi) / (yj - yi) + xi
            inside ^= straddles & (x < x_at)
        return inside

    def boundary_distances(self, points: FloatArray) -> FloatArray:
        """Distance of each ``(x, y)`` row to the nearest edge of the polygon."""
        best = np.full(points.shape[0], np.inf)
        verts = self.vertices
        for i in range(len(verts)):
            (ax, ay), (bx, by) = verts[i - 1], verts[i]
            ex, ey = bx - ax, by - ay
            t = np.clip(((points[:, 0] - ax) * ex + (points[:, 1] - ay) * ey) / (ex * ex + ey * ey), 0.0, 1.0)
            d = np.hypot(points[:, 0] - (ax + t * ex), points[:, 1] - (ay + t * ey))
            np.minimum(best, d, out=best)
        return best
