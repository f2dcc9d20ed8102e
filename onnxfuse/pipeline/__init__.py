"""Pipeline: the stages in order (export → rewrite → run → compare), the demo and the CLI."""

from __future__ import annotations
