"""`python -m engine`: the flowrun command line."""

from engine.cli import main

main()
