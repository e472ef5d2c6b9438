"""The `msml` command: one module per command group; each command parses its options, calls one function and
prints. `app` and `main` live in `msml.cli.app`; importing a group module registers its commands."""

from msml.cli import handin, loop, monitoring, ops, pipeline, project, render, serving, tracking  # noqa: F401 (registers)
from msml.cli.app import app, main

__all__ = ["app", "main"]
