"""``python -m contractive`` (and ``torchrun -m contractive``) runs the CLI."""

from .cli import main

main()
