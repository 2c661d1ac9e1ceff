"""``python -m geounet.cli`` runs the ``geounet`` command."""

from geounet.cli.main import cli

cli()
