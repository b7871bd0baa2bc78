"""What every command gets: where to print, where the edge is, and how to answer
(tables, or JSON with --json)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape

from switchboard_cli.target import Target

if TYPE_CHECKING:
    from switchboard_cli.edge import Edge


@dataclass
class Context:
    out: Console
    err: Console
    target: Target
    json: bool = False

    def edge(self) -> Edge:
        # Imported here: up/down/status need no HTTP client.
        from switchboard_cli.edge import Edge

        return Edge(self.target)

    def print_json(self, data: Any) -> None:
        """Plain JSON on stdout, never wrapped or coloured: for scripts and jq."""
        self.out.file.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
        self.out.file.flush()

    def done(self, text: str) -> None:
        """A one-line confirmation, on stderr with --json so stdout stays JSON."""
        console = self.err if self.json else self.out
        console.print(f"[green]✓[/green] {escape(text)}", highlight=False)
