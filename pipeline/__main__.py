"""`python -m pipeline`: the pipeline command (bin/run-pipeline starts it so)."""

from pipeline.cli import main

main()
