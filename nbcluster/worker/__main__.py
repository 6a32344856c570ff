"""`python -m nbcluster.worker`: one worker process."""

from .main import main

main()
