"""Where a profiled GPU timeline sits idle: the gaps between consecutive device activities.

``gap_report(prof)`` takes a finished ``torch.profiler.profile`` (CUDA activity on), exports
its trace, and reports the span from the first to the last kernel / copy / memset, the time
they were busy, the idle gaps by size, and the largest gaps with the activities on either
side (a gap after a sampler's kernel and before the next step's copies is host work; gaps of
a few µs between kernels of one graph are launch latency and kernel tails).
"""

from __future__ import annotations

import json
import os
import tempfile

DEVICE_CATS = ("kernel", "gpu_memcpy", "gpu_memset")
BINS_US = (2, 5, 20, 100)


def device_events(prof) -> list[tuple[float, float, str]]:
    """``(start µs, end µs, name)`` of every device activity, in start order."""
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        prof.export_chrome_trace(path)
        with open(path) as f:
            trace = json.load(f)
    finally:
        os.unlink(path)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    out = [(float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0.0)), e.get("name", "?"))
           for e in events if e.get("ph") == "X" and e.get("cat") in DEVICE_CATS]
    return sorted(out)


def gap_report(prof, top: int = 12) -> str:
    ev = device_events(prof)
    if len(ev) < 2:
        return "gap report: fewer than two device activities in the trace\n"
    gaps = []
    end, prev = ev[0][1], ev[0][2]
    for s, e, name in ev[1:]:
        if s > end:
            gaps.append((s - end, prev, name))
        if e >= end:
            end, prev = e, name
    span = end - ev[0][0]
    busy = span - sum(g for g, _, _ in gaps)  # the union of the activities (copies may overlap kernels)
    lines = [f"device timeline: span {span / 1e3:.2f} ms, busy {busy / 1e3:.2f} ms, idle {(span - busy) / 1e3:.2f} ms "
             f"in {len(gaps)} gaps ({len(ev)} activities)"]
    lo = 0.0
    for hi in (*BINS_US, float("inf")):
        sel = [g for g, _, _ in gaps if lo <= g < hi]
        lines.append(f"  gaps {lo:>5.0f}-{hi:<5.0f} µs: {len(sel):5d}, {sum(sel) / 1e3:7.3f} ms")
        lo = hi
    lines.append(f"largest {top} gaps (µs: before -> after):")
    for g, before, after in sorted(gaps, reverse=True)[:top]:
        lines.append(f"  {g:8.1f}: {before[:60]} -> {after[:60]}")
    return "\n".join(lines) + "\n"
