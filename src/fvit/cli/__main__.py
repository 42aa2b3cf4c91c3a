"""`python -m fvit.cli ...` (used by `torchrun -m fvit.cli bench ...`)."""

from fvit.cli import main

main()
