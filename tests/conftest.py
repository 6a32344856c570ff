import pytest

from nbcluster.testing import throwaway_cluster


@pytest.fixture
def cluster():
    with throwaway_cluster(2) as c:
        yield c


@pytest.fixture
def client(cluster):
    return cluster.client()


@pytest.fixture
def hosts():
    """A broker namespace and two host namespaces (tests/netns.py); deleted afterwards."""
    from .netns import Hosts
    h = Hosts()
    try:
        yield h
    finally:
        h.close()
