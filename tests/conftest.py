import pytest

from nbcluster.testing import throwaway_cluster

# The helpers' asserts explain themselves as the tests' own do (they were in test modules).
pytest.register_assert_rewrite("tests.support")


@pytest.fixture
def cluster():
    with throwaway_cluster(2) as c:
        yield c


@pytest.fixture
def client(cluster):
    return cluster.client()


@pytest.fixture(scope="module")
def shared_cluster():
    """One 2-worker cluster for a module's tests that leave it as they found it (a test that
    cancels or kills takes `cluster`, a fresh one)."""
    with throwaway_cluster(2) as c:
        yield c


@pytest.fixture
def hosts():
    """A broker namespace and two host namespaces (tests/support/netns.py); deleted afterwards."""
    from .support.netns import Hosts
    h = Hosts()
    try:
        yield h
    finally:
        h.close()
