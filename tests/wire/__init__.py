"""Tests of nbcluster/wire/: serialization, big bytes, message limits, remote exceptions,
signing and keys, Curve across hosts."""
