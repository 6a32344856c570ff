"""Tests of nbcluster/cluster/: the broker's keeper, the SSH and Slurm launchers."""
