"""``python -m convert`` runs the ``convert-leads`` command."""

from convert.cli import main

main()
