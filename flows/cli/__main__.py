"""``python -m flows.cli``: the ``cmsvd`` command line."""

from flows.cli import main

main()
