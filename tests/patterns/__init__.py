"""Tests of nbcluster/patterns/: collections, MapReduce, mirror workers, joblib."""
