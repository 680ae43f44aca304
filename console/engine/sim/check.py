"""Checking a simulation run against the scenario's `expect` (FORMAT.md, "Expectations")."""

from __future__ import annotations

from collections.abc import Sequence

from console.engine.sim.scenario import Scenario
from console.engine.sim.world import Run
from console.engine.states import ServiceState


def matches(pattern: str, label: str) -> bool:
    """A pattern ending in `*` matches every label starting with the text before it."""
    if pattern.endswith("*"):
        return label.startswith(pattern[:-1])
    return label == pattern


def final_state(run: Run) -> dict[str, dict[str, object]]:
    services: dict[str, object] = {}
    for name, s in sorted(run.status.services.items()):
        entry: dict[str, object] = {"state": s.state.value}
        if s.node is not None and s.state is ServiceState.STARTED:
            entry["node"] = s.node
        services[name] = entry
    nodes: dict[str, object] = {}
    for name, h in sorted(run.hosts.items()):
        hs = run.status.hosts.get(name)
        nodes[name] = {
            "state": hs.state.value if hs else "unknown",
            "power": "on" if h.power else "off",
            "guests": sorted(h.guests),
        }
    return {"services": services, "nodes": nodes}


def failures(sc: Scenario, run: Run) -> list[str]:
    """Every expectation that does not hold, plus every safety violation."""
    out = list(run.violations)
    labels: Sequence[tuple[float, str]] = run.trace
    exp = sc.expect
    for name, (state, node) in sorted(exp.final.items()):
        s = run.status.services.get(name)
        got = s.state.value if s else "unknown"
        where = s.node if s and s.state is ServiceState.STARTED else None
        if got != state or (node is not None and where != node):
            want = f"{state}" + (f" on {node}" if node else "")
            have = f"{got}" + (f" on {where}" if where else "")
            out.append(f"final: {name} should be {want}, is {have}")
    fenced = sorted(
        {lab.split(":")[1] for _, lab in labels if lab.startswith("fence:") and lab.endswith(":ok")}
    )
    if exp.fenced is not None and sorted(set(exp.fenced)) != fenced:
        out.append(f"fenced: expected exactly {sorted(set(exp.fenced))}, got {fenced}")
    for node in exp.not_fenced:
        if any(lab.startswith(f"fence:{node}:") for _, lab in labels):
            out.append(f"not_fenced: {node} was fenced")
    for a, b in exp.order:
        first_a = next((i for i, (_, lab) in enumerate(labels) if matches(a, lab)), None)
        last_b = max((i for i, (_, lab) in enumerate(labels) if matches(b, lab)), default=None)
        if first_a is None or last_b is None or first_a >= last_b:
            missing = a if first_a is None else b if last_b is None else None
            why = f"{missing!r} never happened" if missing else "wrong order"
            out.append(f"order: {a!r} before {b!r}: {why}")
    for pattern in exp.absent:
        hit = next(((t, lab) for t, lab in labels if matches(pattern, lab)), None)
        if hit is not None:
            out.append(f"absent: {hit[1]!r} happened at t={hit[0]:g}")
    for w in exp.within:
        start = next(((i, t) for i, (t, lab) in enumerate(labels) if matches(w.start, lab)), None)
        if start is None:
            out.append(f"within: {w.start!r} never happened")
            continue
        end = next(
            (t for t, lab in labels[start[0] + 1 :] if matches(w.end, lab)),
            None,
        )
        if end is None:
            out.append(f"within: {w.end!r} never happened after {w.start!r}")
        elif end - start[1] > w.seconds:
            out.append(
                f"within: {w.start!r} -> {w.end!r} took {end - start[1]:g}s, limit {w.seconds:g}s"
            )
    return out
