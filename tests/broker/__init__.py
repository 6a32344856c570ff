"""Tests of nbcluster/broker/: its state machine (fake clock), and the broker with real
processes (give-backs, starvation, stalls, restarts)."""
