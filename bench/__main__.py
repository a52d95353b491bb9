"""``python -m bench [all|voice|turn_taking|tools|capacity|memory|startup] [--quick] [--json PATH]``

Runs each part beside its baseline (stock livekit-agents 0.12.21 VoicePipelineAgent) in one
run, writes ``<out-dir>/<part>.json`` and ``<out-dir>/<part>.png`` and prints a table.
``--json`` also writes every part's result (and the machine) into one file; ``--table-from``
prints the table again from such a file or from a directory of part files (docs/bench/). Without
``--out-dir``, full runs write to docs/bench/ and ``--quick`` runs to artifacts/bench-quick/.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from .harness import DOCS_BENCH, machine_info, write_json

PARTS = ("voice", "turn_taking", "tools", "capacity", "memory", "startup")


def _module(part: str) -> ModuleType:
    return importlib.import_module(f"bench.{part}")


def format_table(results: dict[str, dict[str, Any]]) -> str:
    rows: list[tuple[str, str, str, str]] = [("metric", "ours", "stock", "ours/stock")]
    for part, result in results.items():
        rows.extend(_module(part).table(result))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = []
    for n, row in enumerate(rows):
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
        if n == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


async def run_parts(parts: Sequence[str], quick: bool, out_dir: Path) -> dict[str, Any]:
    results: dict[str, dict[str, Any]] = {}
    machine = machine_info()
    for part in parts:
        module = _module(part)
        started = time.perf_counter()
        logging.getLogger("bench").info("running %s", part)
        result = await module.run(quick=quick)
        result["seconds"] = round(time.perf_counter() - started, 1)
        result["quick"] = quick
        result["machine"] = machine
        results[part] = result
        write_json(out_dir / f"{part}.json", result)
        module.draw(result, out_dir / f"{part}.png")
        print(f"{part}: {result['seconds']} s -> {out_dir / (part + '.json')}", file=sys.stderr)
    machine["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return {"machine": machine, "quick": quick, "parts": results}


def saved_results(path: Path) -> dict[str, dict[str, Any]]:
    """The parts' results of an ``--json`` report, or of the ``<part>.json`` files in a
    directory (e.g. docs/bench/, where each part run alone writes its own)."""
    if not path.is_dir():
        parts: dict[str, dict[str, Any]] = json.loads(path.read_text())["parts"]
        return parts
    return {
        part: json.loads((path / f"{part}.json").read_text())
        for part in PARTS
        if (path / f"{part}.json").exists()
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("part", nargs="?", default="all", choices=("all", *PARTS))
    parser.add_argument("--quick", action="store_true", help="a CI sanity run (a few minutes)")
    parser.add_argument("--json", type=Path, help="also write all results into this file")
    parser.add_argument("--out-dir", type=Path, help="where <part>.json and <part>.png go")
    parser.add_argument(
        "--table-from",
        type=Path,
        help="print the table of a saved --json report, or of a directory's <part>.json files",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.table_from is not None:
        print(format_table(saved_results(args.table_from)))
        return 0
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    if not args.verbose:
        # the pipelines' per-turn chatter; warnings from the bench itself stay visible
        logging.getLogger("livekit").setLevel(logging.ERROR)
    parts = PARTS if args.part == "all" else (args.part,)
    out_dir = args.out_dir or (Path("artifacts/bench-quick") if args.quick else DOCS_BENCH)
    report = asyncio.run(run_parts(parts, args.quick, out_dir))
    if args.json is not None:
        write_json(args.json, report)
    print(format_table(report["parts"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
