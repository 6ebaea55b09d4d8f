"""The read-only status page, ``/ui``: every model, its freshness, quality over time with
drift points, its label-free signals, label delay and firing alerts.

The page is plain HTML and JavaScript served by the API (nothing from outside: no CDN).
The HTML holds no data; the script asks for the API token once (kept in the tab's
sessionStorage) and reads ``GET /v1/ui/status`` with it every few seconds, so the data is
behind the same auth as every ``/v1`` route. ``StatusBoard`` builds that answer from the
served states, and each model's history from its timeline in Redis (`store.timeline`): one
point per checkpoint written, so an API that restarts, and every replica, shows the same.
It reads only the entries newer than the last it holds.

A point combines the model's shards as the page does for the served state: each shard as
of its last entry up to that one, the rolling metric weighted by events learned, drift
counts summed, and for each label-free signal the shard whose value is furthest past its
threshold (as a share of it). Its time is when the checkpoint was written (Redis' clock):
it never goes back, even when a topic's event times do; the event time of the checkpoint's
last event is shown beside it.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import time
from collections.abc import Callable, Mapping
from typing import Any

from livelearn.learners import combine_metrics
from livelearn.serving.alerts import AlertsView, FiringAlert
from livelearn.store.timeline import TimelineEntry, TimelineRead

__all__ = ["PAGE", "PAGE_POLICY", "StatusBoard"]

# Points of history kept per model, one per checkpoint in its timeline.
_HISTORY = 720
# Entries read before those shown when the history is read afresh, so that every shard's
# state is known by the first point shown (as for an API that read them as they came).
_WARM = 280
# The most entries one poll reads; a model that wrote more since catches up on the next.
_READ = 1000
# How far back an alarm or a drift detection still shows as firing.
_FIRING_S = 600.0
# A model whose newest checkpoint is older than this is reported stale.
_STALE_S = 300.0


class StatusBoard:
    """What the status page shows; ``describe`` is ``Lookup.describe``.

    ``alerts`` gives the alerts Prometheus reports firing (``serving.alerts_url``): each
    model then shows the firing alerts labelled with its name, and the page the others
    (Kafka, Redis, workers). Without it, or while Prometheus does not answer, the firing
    list is derived from the served state: a drift detection or label-free alarm in the
    last 10 minutes, or a checkpoint older than 5 minutes.
    """

    def __init__(
        self,
        models: Callable[[], list[str]],
        describe: Callable[[str], dict[str, Any]],
        clock: Callable[[], float] = time.time,
        alerts: Callable[[], AlertsView] | None = None,
        *,
        timeline: Callable[[str, str | None, int], TimelineRead],
    ) -> None:
        self._models = models
        self._describe = describe
        self._clock = clock
        self._alerts = alerts
        self._timeline = timeline
        self._history: dict[str, _History] = {}
        # When each model's alarm and drift counts last grew: (count, time) by name.
        self._grew: dict[str, dict[str, tuple[float, float]]] = {}

    def status(self) -> dict[str, Any]:
        """Every model's summary, history and firing alerts, and the alerts about no model."""
        now = self._clock()
        view = self._alerts() if self._alerts is not None else None
        error = view.error if view is not None else None
        # Prometheus' answer, when there is one and the last attempt to read it worked.
        answer = view.alerts if view is not None and view.read_at is not None else None
        models = [self._model(name, now) for name in self._models()]
        if answer is not None and error is None:
            for model in models:
                model["firing"] = sorted({a.name for a in answer if a.model == model["model"]})
            source, other = "prometheus", sorted({_where(a) for a in answer if a.model is None})
        else:
            source, other = "derived", []
        return {
            "time": now,
            "alerts": {"source": source, "error": error, "other": other},
            "models": models,
        }

    def _model(self, name: str, now: float) -> dict[str, Any]:
        described = self._describe(name)
        shards = described["shards"]
        primary = next(iter(_first(shards, "metrics")), None)
        rolling_metrics = _weighted_all(shards, "rolling_metrics")
        signals = _signals(shards)
        counts = {
            "drift": float(sum(s["drift_detections"] for s in shards)),
            **{f"alarm:{k}": float(v) for k, v in _alarms(shards).items()},
        }
        history = self._history.get(name)
        if history is None:
            history = self._history[name] = _History()
        history.follow(lambda after, count: self._timeline(name, after, count))
        grew = self._grew.setdefault(name, {})
        for key, count in counts.items():
            before = grew.get(key)
            if before is None:
                grew[key] = (count, 0.0)  # counts from before the page started: history
            elif count > before[0]:
                grew[key] = (count, now)
        firing = [
            key.split(":", 1)[-1]
            for key, (_, when) in grew.items()
            if when and now - when < _FIRING_S
        ]
        freshness = described["freshness_seconds"]
        if freshness is not None and freshness > _STALE_S:
            firing.append("stale")
        labels = _labels(shards)
        return {
            "model": name,
            "task": described["task"],
            "release": described["release"],
            "versions": sorted({s["version"] for s in shards if s["version"] is not None}),
            "freshness_seconds": freshness,
            "events_learned": described["events_learned"],
            "primary_metric": primary,
            "metrics": _weighted_all(shards, "metrics"),
            "rolling_metrics": rolling_metrics,
            "signals": signals,
            "shifted_feature": next(
                (m["shifted_feature"] for s in shards if (m := s.get("monitor"))), None
            ),
            "labels": labels,
            "estimate": _estimate(shards),
            "firing": sorted(firing),
            "history": list(history.points),
        }


class _History:
    """A model's history as its timeline holds it: one point per entry, oldest first."""

    def __init__(self) -> None:
        self.points: collections.deque[dict[str, Any]] = collections.deque(maxlen=_HISTORY)
        self._last: str | None = None  # the id of the newest entry read
        self._shards: dict[tuple[str, int], TimelineEntry] = {}

    def _clear(self) -> None:
        self.points.clear()
        self._last = None
        self._shards.clear()

    def follow(self, read: Callable[[str | None, int], TimelineRead]) -> None:
        """Add the entries written since the last read. A timeline deleted (a model reset),
        or trimmed past the newest entry read, is read afresh."""
        found = read(self._last, _READ if self._last else _HISTORY + _WARM)
        if self._last is not None and (
            found.first_id is None or _order(found.first_id) > _order(self._last)
        ):
            self._clear()
            found = read(None, _HISTORY + _WARM)
        for entry in found.entries:
            self._add(entry)

    def _add(self, entry: TimelineEntry) -> None:
        self._last = entry.id
        self._shards[entry.topic, entry.partition] = entry
        shards = list(self._shards.values())
        primary = next(iter(entry.rolling_metrics), None)
        rolling = combine_metrics([(s.rolling_metrics, s.events_learned) for s in shards])
        where = f"{entry.topic}/{entry.partition}"
        self.points.append(
            {
                "id": entry.id,
                "t": entry.t,
                "event_ms": entry.event_ms,
                "shard": where,
                "next_offset": entry.next_offset,
                "version": entry.version,
                "events_learned": sum(s.events_learned for s in shards),
                "rolling": rolling.get(primary) if primary is not None else None,
                "drift": sum(s.drift_detections for s in shards),
                "drift_offsets": entry.drift_offsets,
                "signals": _worst_signals(shards),
                "alarms": [
                    {**a, "shard": f"{entry.topic}/{entry.partition}"} for a in entry.alarms
                ],
            }
        )


def _order(entry_id: str) -> tuple[int, int]:
    """A stream entry id as a pair that sorts as Redis orders the ids."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _worst_signals(shards: list[TimelineEntry]) -> dict[str, dict[str, Any]]:
    """Each label-free signal's value and threshold in the shard where it is furthest past
    its threshold, as a share of it."""
    out: dict[str, dict[str, Any]] = {}
    for shard in shards:
        monitor = shard.monitor or {}
        thresholds = monitor.get("thresholds") or {}
        for signal, value in (monitor.get("signals") or {}).items():
            threshold = thresholds.get(signal)
            if value is None or not threshold:
                continue
            ratio = value / threshold
            if signal not in out or ratio > out[signal]["ratio"]:
                out[signal] = {
                    "value": value,
                    "threshold": threshold,
                    "ratio": ratio,
                    "responsible": (monitor.get("responsible") or {}).get(signal),
                    "shard": f"{shard.topic}/{shard.partition}",
                }
    return out


def _where(alert: FiringAlert) -> str:
    """An alert about no model: its name, and where (instance, dependency) if it says."""
    where = [alert.labels[k] for k in ("instance", "dependency") if k in alert.labels]
    return f"{alert.name} ({', '.join(where)})" if where else alert.name


def _first(shards: list[dict[str, Any]], key: str) -> Mapping[str, Any]:
    return shards[0][key] if shards else {}


def _weighted_all(shards: list[dict[str, Any]], key: str) -> dict[str, float | None]:
    """Each metric over the shards, weighted by events learned (as predictions combine)."""
    return combine_metrics([(s[key], s["events_learned"]) for s in shards])


def _signals(shards: list[dict[str, Any]]) -> dict[str, float]:
    """Each label-free signal's largest value over the shards."""
    out: dict[str, float] = {}
    for shard in shards:
        for signal, value in (shard.get("monitor") or {}).get("signals", {}).items():
            if value is not None:
                out[signal] = max(value, out.get(signal, value))
    return out


def _alarms(shards: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = collections.Counter()
    for shard in shards:
        for signal, count in (shard.get("monitor") or {}).get("alarms", {}).items():
            out[signal] += count
    return dict(out)


def _estimate(shards: list[dict[str, Any]]) -> dict[str, float | None] | None:
    """The accuracy estimated from the shards' confidence (newest windows), and the
    estimated and realised accuracy of their newest labelled windows, weighted by events
    learned; None for a model without the estimate.

    >>> shard = {"latest": {"estimated": 0.8}, "labelled": {"estimated": 0.9, "realised": 0.7}}
    >>> _estimate([{"estimate": shard, "events_learned": 1},
    ...            {"estimate": {"latest": {"estimated": 0.9}}, "events_learned": 3}])
    {'estimated': 0.875, 'labelled_estimated': 0.9, 'realised': 0.7}
    >>> _estimate([{"events_learned": 1}]) is None
    True
    """
    rows = [(s["estimate"], s["events_learned"]) for s in shards if s.get("estimate")]
    if not rows:
        return None
    parts = [
        (
            {
                "estimated": (e.get("latest") or {}).get("estimated"),
                "labelled_estimated": (e.get("labelled") or {}).get("estimated"),
                "realised": (e.get("labelled") or {}).get("realised"),
            },
            weight,
        )
        for e, weight in rows
    ]
    return combine_metrics(parts)


def _labels(shards: list[dict[str, Any]]) -> dict[str, int] | None:
    rows = [s["labels"] for s in shards if s.get("labels")]
    if not rows:
        return None
    return {key: sum(r.get(key, 0) for r in rows) for key in ("joined", "expired", "pending")}


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>livelearn status</title>
<link rel="icon" href="data:,">
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5rem; color: #1d2330; }
  h1 { font-size: 1.3rem; margin: 0 0 .3rem; }
  #updated { color: #667; margin-bottom: 1rem; }
  .model { border: 1px solid #d6dae3; border-radius: 8px; padding: 1rem; margin: 0 0 1rem; }
  .model h2 { font-size: 1.1rem; margin: 0 0 .5rem; }
  .facts { display: flex; flex-wrap: wrap; gap: 1.2rem; margin-bottom: .6rem; }
  .facts div span { display: block; color: #667; font-size: .8rem; }
  .alert { display: inline-block; background: #c0392b; color: #fff; border-radius: 4px;
           padding: 0 .4rem; margin-right: .3rem; }
  .ok { color: #1e8449; }
  canvas { width: 100%; max-width: 900px; height: 300px; display: block; }
  .alarm-list { font-size: .8rem; color: #a04000; margin: .4rem 0 0; padding-left: 1.2rem; }
  .bars div { display: flex; align-items: center; gap: .5rem; font-size: .85rem; }
  .bars b { display: inline-block; height: .7rem; background: #2e86c1; }
  #login { display: none; }
</style>
</head>
<body>
<h1>livelearn: models</h1>
<div id="updated">loading…</div>
<div id="pipeline"></div>
<form id="login"><label>API token <input id="token" type="password" autocomplete="off"></label>
<button>Show</button></form>
<div id="models"></div>
<script>
"use strict";
const REFRESH_MS = 2000;
const tokenKey = "livelearn-token";

function token() { return sessionStorage.getItem(tokenKey); }

document.getElementById("login").addEventListener("submit", (e) => {
  e.preventDefault();
  sessionStorage.setItem(tokenKey, document.getElementById("token").value);
  document.getElementById("login").style.display = "none";
  refresh();
});

function fmt(v, digits = 4) {
  return v === null || v === undefined ? "-" : Number(v).toFixed(digits);
}

function age(seconds) {
  if (seconds === null || seconds === undefined) return "no checkpoint yet";
  if (seconds < 120) return seconds.toFixed(1) + " s ago";
  return (seconds / 60).toFixed(1) + " min ago";
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  Object.entries(attrs || {}).forEach(([k, v]) => node.setAttribute(k, v));
  children.forEach((c) => node.append(c));
  return node;
}

// The history's x axis is the time each checkpoint was written (Redis' clock, p.t): it
// never goes back, even when a topic's event times do; a point's event time is in its
// hover text. Top: the rolling primary metric, drift detections as red lines. Bottom: each
// label-free signal as a share of its threshold, the threshold the dashed line at 1.
// Alarms are marked on both (orange), explained in the hover text and the list below.
const SIGNAL_COLORS = ["#8e44ad", "#16a085", "#d35400", "#2c3e50", "#c0392b", "#27ae60", "#7f8c8d"];

function clock(t) { return new Date(t * 1000).toLocaleTimeString(); }

function explain(a) {
  const what = a.feature === null || a.feature === undefined ? "" : " on " + a.feature +
    (a.category === null || a.category === undefined ? "" : " (" + a.category + ")");
  const when = a.first_event_ms === null ? "" : ", event times " +
    new Date(a.first_event_ms).toISOString() + " to " + new Date(a.last_event_ms).toISOString();
  return a.signal + what + ": " + fmt(a.value, 3) + " over its threshold " + fmt(a.threshold, 3) +
    ", window of offsets " + a.first_offset + "-" + a.last_offset + when +
    " (shard " + a.shard + ")";
}

function chart(canvas, points, primary) {
  const ctx = canvas.getContext("2d");
  const r = devicePixelRatio;
  const w = canvas.width = canvas.clientWidth * r;
  const h = canvas.height = canvas.clientHeight * r;
  ctx.clearRect(0, 0, w, h);
  ctx.fillStyle = "#667"; ctx.font = (11 * r) + "px sans-serif";
  if (points.length < 1) { ctx.fillText("no checkpoint in the timeline yet", 10, h / 2); return; }
  const x0 = points[0].t, x1 = Math.max(points[points.length - 1].t, x0 + 1);
  const left = 44 * r, right = w - 8 * r;
  const px = (x) => left + (x - x0) / (x1 - x0) * (right - left);
  const top = [14 * r, h * 0.55], bottom = [h * 0.55 + 14 * r, h - 18 * r];
  const ys = points.map((p) => p.rolling).filter((y) => y !== null);
  let y0 = Math.min(...ys), y1 = Math.max(...ys);
  if (!ys.length) { y0 = 0; y1 = 1; }
  if (y1 - y0 < 1e-6) { y0 -= 0.05; y1 += 0.05; }
  const py = (y) => top[1] - (y - y0) / (y1 - y0) * (top[1] - top[0]);
  const ratios = points.flatMap((p) => Object.values(p.signals).map((s) => s.ratio));
  const r1 = Math.min(3, Math.max(1.2, ...ratios));  // clipped: a change from a constant is huge
  const pr = (v) => bottom[1] - Math.min(v, r1) / r1 * (bottom[1] - bottom[0]);
  // Axes, ticks in wall time.
  ctx.fillText("rolling " + (primary || ""), left, 10 * r);
  ctx.fillText(fmt(y1, 3), 2, py(y1) + 4 * r); ctx.fillText(fmt(y0, 3), 2, py(y0));
  ctx.fillText("signal / threshold", left, bottom[0] - 3 * r);
  for (let i = 0; i <= 4; i++) {
    const t = x0 + (x1 - x0) * i / 4;
    ctx.fillText(clock(t), Math.min(px(t), right - 60 * r), h - 4 * r);
  }
  ctx.setLineDash([4 * r, 3 * r]); ctx.strokeStyle = "#c0392b"; ctx.lineWidth = r;
  ctx.beginPath(); ctx.moveTo(left, pr(1)); ctx.lineTo(right, pr(1)); ctx.stroke();
  ctx.setLineDash([]); ctx.fillText("threshold", right - 55 * r, pr(1) - 3 * r);
  const mark = (t, color) => {
    ctx.strokeStyle = color; ctx.beginPath();
    ctx.moveTo(px(t), top[0]); ctx.lineTo(px(t), bottom[1]);
    ctx.stroke();
  };
  points.forEach((p, i) => {
    if (i > 0 && p.drift > points[i - 1].drift) mark(p.t, "rgba(192,57,43,.6)");
    if (p.alarms.length) mark(p.t, "rgba(230,126,34,.9)");
  });
  const line = (value, scale, color) => {
    ctx.strokeStyle = color; ctx.lineWidth = 2 * r; ctx.beginPath();
    let started = false;
    points.forEach((p) => {
      const v = value(p);
      if (v === null || v === undefined) { started = false; return; }
      if (started) ctx.lineTo(px(p.t), scale(v)); else ctx.moveTo(px(p.t), scale(v));
      started = true;
    });
    ctx.stroke();
  };
  line((p) => p.rolling, py, "#2e86c1");
  const names = [...new Set(points.flatMap((p) => Object.keys(p.signals)))].sort();
  names.forEach((name, i) => {
    const color = SIGNAL_COLORS[i % SIGNAL_COLORS.length];
    line((p) => (p.signals[name] || {}).ratio, pr, color);
    ctx.fillStyle = color; ctx.fillText(name, left + 140 * r + i * 110 * r, bottom[0] - 3 * r);
  });
  canvas.onmousemove = (e) => {
    const box = canvas.getBoundingClientRect();
    const x = (e.clientX - box.left) * r;
    const p = points.reduce((a, b) => Math.abs(px(b.t) - x) < Math.abs(px(a.t) - x) ? b : a);
    const signals = Object.entries(p.signals).map(([k, s]) =>
      k + " " + fmt(s.value, 3) + " / " + fmt(s.threshold, 3) +
      (s.responsible ? " (" + s.responsible + ")" : ""));
    canvas.title = [
      "checkpoint written " + clock(p.t) + " · shard " + p.shard + " v" + p.version +
        " · next offset " + p.next_offset,
      "event time " + (p.event_ms === null ? "-" : new Date(p.event_ms).toISOString()),
      "rolling " + (primary || "") + " " + fmt(p.rolling) + " · drift detections " + p.drift,
      ...signals, ...p.alarms.map((a) => "ALARM " + explain(a)),
    ].join("\\n");
  };
}

function alarmList(points) {
  const list = el("ul", {"class": "alarm-list"});
  points.filter((p) => p.alarms.length).slice(-10).reverse().forEach((p) => {
    p.alarms.forEach((a) => list.append(el("li", {}, clock(p.t) + " " + explain(a))));
  });
  return list;
}

function render(status) {
  const root = document.getElementById("models");
  root.replaceChildren();
  document.getElementById("updated").textContent =
    "updated " + new Date(status.time * 1000).toLocaleTimeString() + " · " +
    status.models.length + " model(s) · alerts: " +
    (status.alerts.source === "prometheus" ? "from Prometheus" : "derived from the models' state") +
    (status.alerts.error ? " (" + status.alerts.error + ")" : "");
  const pipeline = document.getElementById("pipeline");
  pipeline.replaceChildren();
  status.alerts.other.forEach((a) => pipeline.append(el("span", {"class": "alert"}, a)));
  status.models.forEach((m) => {
    const card = el("section", {"class": "model", "data-model": m.model});
    card.append(el("h2", {}, m.model + " (" + m.task + ")"));
    const facts = el("div", {"class": "facts"});
    const fact = (label, value, cls) => {
      const node = el("div", {}, el("span", {}, label), value);
      if (cls) node.setAttribute("class", cls);
      facts.append(node);
    };
    fact("serving", m.release === null ? "latest checkpoints v" + m.versions.join(",")
                                        : "release " + m.release);
    fact("freshness", age(m.freshness_seconds), "freshness");
    fact("events learned", String(m.events_learned), "learned");
    fact(m.primary_metric || "metric", fmt(m.metrics[m.primary_metric]));
    fact("rolling", fmt(m.rolling_metrics[m.primary_metric]));
    if (m.estimate) {
      fact("accuracy estimated (newest window)", fmt(m.estimate.estimated));
      fact("labelled window: estimated / realised",
           fmt(m.estimate.labelled_estimated) + " / " + fmt(m.estimate.realised));
    }
    if (m.labels) {
      fact("labels joined / expired / pending",
           m.labels.joined + " / " + m.labels.expired + " / " + m.labels.pending);
    }
    card.append(facts);
    const alerts = el("div", {"class": "alerts"});
    if (m.firing.length) m.firing.forEach((a) => alerts.append(el("span", {"class": "alert"}, a)));
    else alerts.append(el("span", {"class": "ok"}, "no alert firing"));
    card.append(alerts);
    const canvas = el("canvas", {"class": "quality"});
    card.append(canvas);
    const bars = el("div", {"class": "bars"});
    Object.entries(m.signals).forEach(([name, value]) => {
      const width = Math.min(200, Math.max(1, value * 200));
      const label = name === "feature_shift" && m.shifted_feature
        ? name + " (" + m.shifted_feature + ")" : name;
      bars.append(el("div", {}, el("span", {}, label), el("b", {"style": "width:" + width + "px"}),
                     el("span", {}, fmt(value, 3))));
    });
    card.append(bars);
    card.append(alarmList(m.history));
    root.append(card);
    chart(canvas, m.history, m.primary_metric);
  });
}

async function refresh() {
  if (!token()) { document.getElementById("login").style.display = "block"; return; }
  try {
    const resp = await fetch("/v1/ui/status", {headers: {"Authorization": "Bearer " + token()}});
    if (resp.status === 401 || resp.status === 403) {
      sessionStorage.removeItem(tokenKey);
      document.getElementById("updated").textContent = "the token was refused";
      document.getElementById("login").style.display = "block";
      return;
    }
    render(await resp.json());
  } catch (err) {
    document.getElementById("updated").textContent = "cannot reach the API: " + err;
  }
}

refresh();
setInterval(() => { if (token()) refresh(); }, REFRESH_MS);
</script>
</body>
</html>
"""


def _policy(page: str) -> str:
    """The page's Content-Security-Policy: its own script (by hash) and the API, nothing else."""
    script = page.split("<script>", 1)[1].split("</script>", 1)[0]
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    return (
        f"default-src 'none'; script-src 'sha256-{digest}'; style-src 'unsafe-inline'; "
        "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )


PAGE_POLICY = _policy(PAGE)
