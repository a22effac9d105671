"""`python -m bench [--quick]` from the repository root."""

from bench.run import main

main()
