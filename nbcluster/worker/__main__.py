"""`python -m nbcluster.worker`: one worker process."""

from .loop import main

main()
