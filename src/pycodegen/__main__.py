"""`python -m pycodegen` runs the CLI."""

from pycodegen.cli import main

main()
