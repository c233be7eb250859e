"""BS.1770 integrated loudness fed in pieces: a long clip is measured in constant memory.

The K-weighting filters and the 400 ms / 75 % overlap gating are pyloudnorm's (its filter coefficients, its
block bounds, its gates); only the order of work differs: the filters carry their state from piece to piece,
and each gating block's energy comes from running sums of the squared signal at the block bounds. The result
matches ``pyloudnorm.Meter(rate).integrated_loudness`` of the whole clip to rounding.
"""

from __future__ import annotations

import math

import numpy as np

#: BS.1770's gating block and its overlap (pyloudnorm's defaults)
_BLOCK_S = 0.4
_STEP = 0.25
#: channel weights L, R, C, Ls, Rs
_CHANNEL_GAINS = (1.0, 1.0, 1.0, 1.41, 1.41)
_ABSOLUTE_GATE = -70.0


class LoudnessMeter:
    """Integrated loudness of a clip of ``frames`` frames, fed as (frames, channels) float pieces in order."""

    def __init__(self, sample_rate: int, channels: int, frames: int) -> None:
        import pyloudnorm  # only measuring needs it (it imports scipy.signal: ~1 s)

        if not 1 <= channels <= len(_CHANNEL_GAINS):
            raise ValueError(f"loudness is measured for 1 to {len(_CHANNEL_GAINS)} channels, not {channels}")
        self.sample_rate, self.channels, self.frames = sample_rate, channels, frames
        stages = pyloudnorm.Meter(sample_rate)._filters.values()  # the K-weighting pair
        self._stages = [(float(f.passband_gain), np.asarray(f.b), np.asarray(f.a)) for f in stages]
        self._state = [np.zeros((max(len(b), len(a)) - 1, channels)) for _, b, a in self._stages]
        seconds = frames / sample_rate
        blocks = int(np.round((seconds - _BLOCK_S) / (_BLOCK_S * _STEP))) + 1
        j = np.arange(max(blocks, 0))
        # the bounds exactly as pyloudnorm computes them (float, then truncated), clipped to the clip
        self._lower = np.minimum((_BLOCK_S * (j * _STEP) * sample_rate).astype(np.int64), frames)
        self._upper = np.minimum((_BLOCK_S * (j * _STEP + 1) * sample_rate).astype(np.int64), frames)
        self._bounds = np.unique(np.concatenate([self._lower, self._upper]))
        self._sums = np.zeros((len(self._bounds), channels))  # sum of squares before each bound
        self._next = 0  # the first bound not yet reached
        self._seen = 0
        self._total = np.zeros(channels)

    def add(self, samples: np.ndarray) -> None:
        """Feed the next ``samples`` ((frames, channels), any float dtype)."""
        from scipy.signal import lfilter

        weighted = np.asarray(samples, dtype=np.float64).reshape(-1, self.channels)
        for index, (gain, b, a) in enumerate(self._stages):
            weighted, self._state[index] = lfilter(b, a, weighted, axis=0, zi=self._state[index])
            weighted = gain * weighted
        squares = np.cumsum(np.square(weighted), axis=0)
        start, end = self._seen, self._seen + len(weighted)
        stop = int(np.searchsorted(self._bounds, end, side="right"))
        for k in range(self._next, stop):
            offset = int(self._bounds[k]) - start
            self._sums[k] = self._total + (squares[offset - 1] if offset > 0 else 0.0)
        self._next = stop
        if len(squares):
            self._total = self._total + squares[-1]
        self._seen = end

    def integrated(self) -> float | None:
        """LUFS of everything fed (all ``frames`` of it); None for silence or a clip under one block."""
        if self.frames < _BLOCK_S * self.sample_rate or not len(self._lower):
            return None
        if self._seen != self.frames:
            raise ValueError(f"fed {self._seen} of {self.frames} frames")
        where = {int(bound): k for k, bound in enumerate(self._bounds)}
        lower = self._sums[[where[int(b)] for b in self._lower]]
        upper = self._sums[[where[int(b)] for b in self._upper]]
        energy = np.maximum(upper - lower, 0.0) / (_BLOCK_S * self.sample_rate)  # (blocks, channels)
        gains = np.asarray(_CHANNEL_GAINS[: self.channels])
        with np.errstate(divide="ignore"):
            block_lufs = -0.691 + 10.0 * np.log10(energy @ gains)
        gated = block_lufs >= _ABSOLUTE_GATE
        if not gated.any():
            return None
        relative = -0.691 + 10.0 * math.log10(float(energy[gated].mean(axis=0) @ gains)) - 10.0
        gated = (block_lufs > relative) & (block_lufs > _ABSOLUTE_GATE)
        if not gated.any():
            return None
        power = float(energy[gated].mean(axis=0) @ gains)
        return -0.691 + 10.0 * math.log10(power) if power > 0 else None


__all__ = ["LoudnessMeter"]
