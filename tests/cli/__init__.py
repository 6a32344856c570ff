"""Tests of nbcluster/cli/: the `nbcluster` command."""
