"""`python -m nbcluster.broker`: the broker process."""

from .loop import main

main()
