"""A bounded series of (x, y) points: each keeps at most `capacity` points and, when full, merges
neighbouring pairs (averaging them). A million step events cost the same memory as four thousand,
and the shape of the curve survives.
"""

from __future__ import annotations


class Series:
    """(x, y) points, downsampled by pairwise merging once `capacity` is reached."""

    def __init__(self, capacity: int = 4096):
        self.capacity = capacity
        self.xs: list[float] = []
        self.ys: list[float] = []
        self.weights: list[int] = []
        self.stride = 1  # raw points per stored point, once merging started
        self.pending: list[tuple[float, float]] = []

    def add(self, x: float, y: float) -> None:
        """Append one raw point."""
        self.pending.append((x, y))
        if len(self.pending) < self.stride:
            return
        px = self.pending[-1][0]
        py = sum(p[1] for p in self.pending) / len(self.pending)
        self.xs.append(px)
        self.ys.append(py)
        self.weights.append(len(self.pending))
        self.pending = []
        if len(self.xs) >= self.capacity:
            self._halve()

    def _halve(self) -> None:
        xs, ys, ws = [], [], []
        for i in range(0, len(self.xs) - 1, 2):
            w = self.weights[i] + self.weights[i + 1]
            xs.append(self.xs[i + 1])
            ys.append((self.ys[i] * self.weights[i] + self.ys[i + 1] * self.weights[i + 1]) / w)
            ws.append(w)
        if len(self.xs) % 2:
            xs.append(self.xs[-1]), ys.append(self.ys[-1]), ws.append(self.weights[-1])
        self.xs, self.ys, self.weights = xs, ys, ws
        self.stride *= 2

    def extend(self, xs: list[float], ys: list[float]) -> None:
        """add() for each point in turn, in bulk: the same stored points, bit for bit (a replay)."""
        i, n = 0, len(xs)
        while i < n:
            if self.pending:  # top up the partial bucket first, exactly as add() would
                take = min(self.stride - len(self.pending), n - i)
                self.pending.extend(zip(xs[i:i + take], ys[i:i + take]))
                i += take
                if len(self.pending) < self.stride:
                    return
                self.pending, last = [], self.pending
                self._bucket(last)
                continue
            s = self.stride
            full = min(self.capacity - len(self.xs), (n - i) // s)
            bx, by, bw = self.xs.append, self.ys.append, self.weights.append
            for a in range(i, i + full * s, s):
                bx(xs[a + s - 1])
                by(sum(ys[a:a + s]) / s)
                bw(s)
            i += full * s
            if len(self.xs) >= self.capacity:
                self._halve()
            elif i < n:
                self.pending = list(zip(xs[i:], ys[i:]))
                return

    def _bucket(self, pending: list[tuple[float, float]]) -> None:
        """One full bucket from its raw points (add()'s arithmetic)."""
        self.xs.append(pending[-1][0])
        self.ys.append(sum(p[1] for p in pending) / len(pending))
        self.weights.append(len(pending))
        if len(self.xs) >= self.capacity:
            self._halve()

    def drop_after(self, x: float) -> None:
        """Forget points past x (a resume recomputes them)."""
        keep = [i for i, v in enumerate(self.xs) if v <= x]
        self.xs = [self.xs[i] for i in keep]
        self.ys = [self.ys[i] for i in keep]
        self.weights = [self.weights[i] for i in keep]
        self.pending = [p for p in self.pending if p[0] <= x]

    def points(self) -> tuple[list[float], list[float]]:
        """Stored points plus the partial bucket, for drawing."""
        if not self.pending:
            return self.xs, self.ys
        tail_y = sum(p[1] for p in self.pending) / len(self.pending)
        return self.xs + [self.pending[-1][0]], self.ys + [tail_y]

    def __len__(self) -> int:
        return len(self.xs) + (1 if self.pending else 0)
