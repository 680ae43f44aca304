"""`python -m console.engine.sim SCENARIO.json [--human]`: exit 0 ok, 1 failed, 2 bad file."""

from __future__ import annotations

import argparse
import json
import sys

from console.engine.sim import ScenarioError, failures, final_state, load, simulate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m console.engine.sim", description="Run an HA scenario."
    )
    parser.add_argument("scenario", help="scenario JSON file (see scenarios/FORMAT.md)")
    parser.add_argument("--human", action="store_true", help="readable trace")
    args = parser.parse_args(argv)
    try:
        sc = load(args.scenario)
    except OSError as e:
        print(f"{args.scenario}: cannot read: {e.strerror}", file=sys.stderr)
        return 2
    except ScenarioError as e:
        print(f"{args.scenario}: invalid scenario: {e}", file=sys.stderr)
        return 2
    run = simulate(sc)
    problems = failures(sc, run)
    final = final_state(run)
    out = sys.stdout
    if args.human:
        out.write(f"{sc.name}: {sc.description}\n")
        for t, line in run.human:
            out.write(f"{t:8.1f}  {line}\n")
        out.write("final:\n")
        for name, s in final["services"].items():
            out.write(f"  {name}: {s}\n")
        for name, n in final["nodes"].items():
            out.write(f"  {name}: {n}\n")
        out.write("OK\n" if not problems else "FAILED\n")
        for p in problems:
            out.write(f"  - {p}\n")
    else:
        for t, label in run.trace:
            out.write(json.dumps({"t": float(t), "label": label}) + "\n")
        out.write(json.dumps({"final": final, "ok": not problems, "failures": problems}) + "\n")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
