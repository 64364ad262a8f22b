"""`python -m ambitctl`: the same CLI as the `ambit` entry point, for a checkout with no install
(or one whose editable install points at another tree)."""

from ambitctl.cli import main

main()
