"""`python -m statesvc`: the statesvc command."""

from statesvc.cli import main

main()
