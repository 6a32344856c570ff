"""Tests of nbcluster/client/: the client, its robustness, a lost broker, captured data,
the Executor (its concurrent.futures contract and its own side)."""
