"""``onnxfuse demo``: the main job end to end on one model.

Today: build the model, export the full model and its isolated MLP (each verified against
torch on two shapes), and print a summary table. Rewrite, parity, bench and the HTML report
join as those stages land.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path

from onnxfuse.exporters import ExportConfig, ExportResult, export

__all__ = ["DemoConfig", "DemoResult", "run_demo"]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """Demo settings: the model and the output folder."""

    model: str = "seed"
    out: Path = Path("out/demo")
    force: bool = True


@dataclasses.dataclass(frozen=True)
class DemoResult:
    exports: tuple[ExportResult, ...]


def run_demo(config: DemoConfig) -> DemoResult:
    """Run the demo; files land in ``config.out``, replacing an earlier demo's."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = Path(config.model).stem if config.model.endswith(".gguf") else Path(config.model).name
    results = []
    for part in ("full", "mlp"):
        log.info("demo: exporting %s (%s)", config.model, part)
        results.append(export(ExportConfig(
            model=config.model, output=out / f"{stem}-{part}.onnx", part=part, force=config.force,
        )))
    _print_summary(results)
    return DemoResult(tuple(results))


def _print_summary(results: list[ExportResult]) -> None:
    width = shutil.get_terminal_size((100, 20)).columns
    rows = [("part", "model", "shape", "output", "rel L2", "limit", "status")]
    for r in results:
        for c in r.checks:
            for o in c.outputs:
                rows.append((r.part, r.onnx_path.name, f"{c.batch}x{c.seq}", o.name,
                             f"{o.rel_l2:.2e}", f"{o.limit:.0e}", "ok" if o.passed else "FAIL"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    rule = "-" * min(width, max(len(line) for line in lines))
    print(rule, lines[0], rule, *lines[1:], rule, sep="\n")  # noqa: T201 - the demo's own output
