"""A classifier's accuracy estimated from its confidence, before its delayed labels come.

Confidence-based performance estimation (CBPE, as NannyML does it in batch): a calibrated
probability that a prediction is right is, averaged over many predictions, the accuracy
expected of them. An ``AccuracyEstimate`` lives inside a shard's learner (so it is
checkpointed with the model, exactly once, and a replay computes the same figures) and
keeps tumbling windows of ``window`` predictions, the monitor's windows (the same count
of scored events, so the same boundaries while every prediction reaches both):

- each prediction adds its confidence (the probability the model gave the class it
  predicted) to a histogram of ``_BINS`` bins for its window;
- each label joined to a prediction adds to a reliability table (per confidence bin:
  labels, and how many were right), which forgets by half every ``_HALF_LIFE`` windows'
  worth of labels, so that it follows a model that keeps learning;
- when a window closes, its estimate is the mean over its predictions of their bin's
  calibrated accuracy: the table's share of right predictions in the bin, pulled towards
  the bin's mean confidence by ``_PRIOR`` pseudo-labels, then made non-decreasing in the
  confidence (pool adjacent violators, as isotonic calibration does); each prediction's
  confidence moves by its bin's distance between the two. Before any label, the estimate
  is the model's mean confidence;
- as its labels come, the window's realised accuracy is counted beside its estimate, for
  the same predictions; the window is *labelled* once each of its predictions was joined
  to a label or expired.

Assumptions (README, "Accuracy before the labels"): the calibration learned on past labels
holds for the predictions being estimated (no concept shift: the same confidence means the
same chance of being right), and labels that never come (expired) are missing at random.
A change of inputs towards the model's uncertain region moves the estimate at once; a
change of the concept alone moves it only as joined labels retrain the model and the table.

Per prediction the cost is a bin's increment; per label two increments; a window's close
reads the ``_BINS`` bins (``python -m bench monitor estimate`` measures it).
"""

from __future__ import annotations

from typing import Any

__all__ = ["AccuracyEstimate"]

# Confidence bins of the histogram and the reliability table: fine enough for a smooth
# calibration, few enough that a bin fills within a few windows of labels.
_BINS = 20
# Scales a confidence to its bin index; below _BINS so that a confidence of 1.0 falls in
# the last bin without a branch.
_SCALE = _BINS * (1 - 1e-12)
# Pseudo-labels pulling a bin's calibrated accuracy towards its mean confidence: a bin with
# a handful of labels is not trusted on them alone.
_PRIOR = 20.0
# The reliability table halves its weight every this many windows' worth of labels.
_HALF_LIFE = 10
_DECAY = 0.5 ** (1 / _HALF_LIFE)
# Closed windows the reference averages (what a release records), and labelled windows kept
# in the stats for a plot of estimate against realised accuracy.
_REFERENCE_WINDOWS = 4
_LABELLED_KEPT = 20
# A window's record, a list for a cheap increment on the hot path: predictions, those
# resolved (joined or expired), those joined with a prediction to score, the right ones
# (the hot path writes the indices as literals).
_N, _RESOLVED, _SCORED, _RIGHT = range(4)


class AccuracyEstimate:
    """Estimated and realised accuracy per window of predictions, for one shard.

    Parameters
    ----------
    window
        Predictions per window.

    Examples
    --------
    >>> est = AccuracyEstimate(window=4)
    >>> for offset, conf in enumerate([0.9, 0.9, 0.7, 0.7]):
    ...     w = est.predicted(conf, offset, None)
    >>> round(est.latest["estimated"], 3)  # no label yet: the raw confidence
    0.8
    >>> for conf, right in [(0.9, True), (0.9, True), (0.7, False), (0.7, True)]:
    ...     est.labelled(w, conf, right)
    >>> est.labelled_window["realised"]
    0.75

    """

    __slots__ = (
        "_closed",
        "_conf_sum",
        "_confs",
        "_counts",
        "_first_ms",
        "_first_offset",
        "_labelled",
        "_labels",
        "_open",
        "_recent",
        "_right",
        "_since_decay",
        "latest",
        "window",
        "windows",
    )

    def __init__(self, window: int) -> None:
        self.window = window
        self.windows = 0  # closed windows; the open one's index
        self._counts = [0] * _BINS  # the open window's confidence histogram
        self._conf_sum = 0.0
        self._first_offset = -1
        self._first_ms: int | None = None
        # The reliability table: per bin, labels (decayed), right ones, and confidence sum.
        self._labels = [0.0] * _BINS
        self._right = [0.0] * _BINS
        self._confs = [0.0] * _BINS
        self._since_decay = 0
        # Windows whose labels are not all in, by index: the counts, and once closed its
        # estimate and where it lies.
        self._open: dict[int, list[int]] = {0: [0, 0, 0, 0]}
        self._closed: dict[int, dict[str, Any]] = {}
        self.latest: dict[str, Any] | None = None
        self._recent: list[float] = []  # the last closed windows' estimates
        self._labelled: list[dict[str, Any]] = []

    def predicted(self, confidence: float | None, offset: int, ts_ms: int | None) -> int:
        """A prediction, with the probability the model gave its class (None when it
        predicted nothing, or no probability in [0, 1]); returns its window's index, for
        `labelled` and `expired`."""
        index = self.windows
        record = self._open[index]
        n = record[0] + 1  # _N
        record[0] = n
        if n == 1:
            self._first_offset, self._first_ms = offset, ts_ms
        if confidence is not None and 0.0 <= confidence <= 1.0:
            self._counts[int(confidence * _SCALE)] += 1
            self._conf_sum += confidence
        if n >= self.window:
            self._close(offset, ts_ms)
        return index

    def labelled(self, index: int | None, confidence: float | None, right: bool) -> None:
        """The label of a prediction of window ``index`` came (None: a prediction kept
        before the estimate existed, which only calibrates): ``right`` is whether the
        prediction was, ``confidence`` as given to `predicted`."""
        scored = False
        if confidence is not None and 0.0 <= confidence <= 1.0:
            scored = True
            b = int(confidence * _SCALE)
            self._labels[b] += 1
            self._confs[b] += confidence
            if right:
                self._right[b] += 1
            self._since_decay += 1
            if self._since_decay >= self.window:
                self._decay()
        record = self._open.get(index) if index is not None else None
        if index is None or record is None:
            return
        record[1] += 1  # _RESOLVED
        if scored:
            record[2] += 1  # _SCORED
            if right:
                record[3] += 1  # _RIGHT
        if record[1] >= record[0] and index < self.windows:
            self._settle(index, record)

    def expired(self, index: int | None) -> None:
        """A prediction of window ``index`` expired without its label."""
        record = self._open.get(index) if index is not None else None
        if index is not None and record is not None:
            record[_RESOLVED] += 1
            self._settle(index, record)

    def _decay(self) -> None:
        self._since_decay = 0
        for table in (self._labels, self._right, self._confs):
            for b in range(_BINS):
                table[b] *= _DECAY

    def calibration(self) -> list[tuple[float, float]]:
        """Each confidence bin's calibrated accuracy and the mean confidence it is drawn
        towards (that of the bin's labelled predictions, else the bin's centre); see the
        module doc.

        >>> est = AccuracyEstimate(window=100)
        >>> est.calibration()[10]  # no label: the bin's centre
        (0.525, 0.525)
        """
        values, weights, priors = [], [], []
        for b in range(_BINS):
            n = self._labels[b]
            prior = self._confs[b] / n if n else (b + 0.5) / _BINS
            priors.append(prior)
            values.append((self._right[b] + _PRIOR * prior) / (n + _PRIOR))
            weights.append(n + _PRIOR)
        return list(zip(_non_decreasing(values, weights), priors, strict=True))

    def _close(self, offset: int, ts_ms: int | None) -> None:
        index = self.windows
        record = self._open[index]
        counts, scored = self._counts, sum(self._counts)
        estimated = None
        if scored:
            # The mean confidence, moved in each bin by the calibrated accuracy's distance
            # from the confidence it was drawn towards: the raw confidence before any label.
            table = self.calibration()
            moved = sum(k * (v - p) for k, (v, p) in zip(counts, table, strict=True))
            estimated = min(1.0, max(0.0, (self._conf_sum + moved) / scored))
        closed = {
            "index": index,
            "first_offset": self._first_offset,
            "last_offset": offset,
            "first_event_ms": self._first_ms,
            "last_event_ms": ts_ms,
            "predictions": record[_N],
            "estimated": estimated,
            "confidence": self._conf_sum / scored if scored else None,
        }
        self.latest = closed
        if estimated is not None:
            self._recent = [*self._recent[-(_REFERENCE_WINDOWS - 1) :], estimated]
        self.windows += 1
        self._counts = [0] * _BINS
        self._conf_sum = 0.0
        self._open[self.windows] = [0, 0, 0, 0]
        self._closed[index] = closed
        self._settle(index, record)

    def _settle(self, index: int, record: list[int]) -> None:
        """Window ``index`` is labelled once it is closed and each prediction resolved."""
        if record[_RESOLVED] < record[_N] or index >= self.windows:
            return
        del self._open[index]
        done = self._closed.pop(index)
        done["labels"] = record[_SCORED]
        done["realised"] = record[_RIGHT] / record[_SCORED] if record[_SCORED] else None
        kept = [w for w in self._labelled if w["index"] != index]
        kept.append(done)
        kept.sort(key=lambda w: w["index"])
        self._labelled = kept[-_LABELLED_KEPT:]

    @property
    def labelled_window(self) -> dict[str, Any] | None:
        """The newest window whose labels are all in (joined or expired), or None."""
        return self._labelled[-1] if self._labelled else None

    @property
    def reference(self) -> float | None:
        """The mean estimate of the last closed windows: what a release records."""
        return sum(self._recent) / len(self._recent) if self._recent else None

    def stats(self) -> dict[str, Any]:
        """The newest window's estimate, the newest labelled window's estimate and realised
        accuracy, the last labelled windows, the reference and the calibration."""
        return {
            "window": self.window,
            "windows": self.windows,
            "latest": None if self.latest is None else dict(self.latest),
            "labelled": None if (w := self.labelled_window) is None else dict(w),
            "reference": self.reference,
            "history": [
                [w["index"], w["last_offset"], w["estimated"], w["realised"]]
                for w in self._labelled
            ],
            "unlabelled_windows": len(self._open) - 1,
            "calibration_labels": round(sum(self._labels), 3),
        }


def _non_decreasing(values: list[float], weights: list[float]) -> list[float]:
    """The weighted least-squares non-decreasing fit of ``values`` (pool adjacent
    violators).

    >>> _non_decreasing([0.5, 0.9, 0.7, 1.0], [1.0, 1.0, 1.0, 1.0])
    [0.5, 0.8, 0.8, 1.0]
    """
    blocks: list[list[float]] = []  # [mean, weight, count]
    for value, weight in zip(values, weights, strict=True):
        blocks.append([value, weight, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            mean, weight2, count = blocks.pop()
            last = blocks[-1]
            total = last[1] + weight2
            last[0] = (last[0] * last[1] + mean * weight2) / total
            last[1], last[2] = total, last[2] + count
    out: list[float] = []
    for mean, _, count in blocks:
        out.extend([mean] * int(count))
    return out
