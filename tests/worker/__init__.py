"""Tests of nbcluster/worker/: registration, faults of workers, the host's supervisor."""
