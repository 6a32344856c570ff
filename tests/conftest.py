import pytest

from nbcluster.testing import throwaway_cluster


@pytest.fixture
def cluster():
    with throwaway_cluster(2) as c:
        yield c


@pytest.fixture
def client(cluster):
    return cluster.client()
