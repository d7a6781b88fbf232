"""``lge-node``: the one command-line entry point. Verbs are grouped by who uses them:
the PACS administrator (`node.cli.operator`) and the researcher (`node.cli.researcher`)."""

from __future__ import annotations

import typer

from node.cli import operator, researcher

app = typer.Typer(
    name="lge-node",
    help="DICOM node for LGE cardiac MR: scar and MVO quantification. "
    "Research software, not a medical device.",
    no_args_is_help=True,
    add_completion=False,
)
for group, panel in ((operator.app, "Node (PACS administrator)"), (researcher.app, "Research")):
    for command in group.registered_commands:
        command.rich_help_panel = panel
        app.registered_commands.append(command)
app.add_typer(researcher.dataset_app, name="dataset", rich_help_panel="Research")

__all__ = ["app"]
