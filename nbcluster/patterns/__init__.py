"""Parallel patterns built on a client and a cluster: collections (`collections`, run by
`chunked_run`, with their worker side `pipeline`), MapReduce (`mapreduce`, with its shuffle),
mirror workers (`mirror`), the default client (`session`) and the joblib backend
(`joblib_backend`, `joblib_hook`).

Each feature keeps its client side and its worker side together here.
May import: client, cluster, worker, wire, errors. Never notebook code.
"""
