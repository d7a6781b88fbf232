"""``python -m node.cli``: the same as the ``lge-node`` command."""

from node.cli import app

app()
