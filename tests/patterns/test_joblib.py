"""joblib's "nbcluster" backend, side by side with loky: the same Parallel calls give the same
results and errors; batching, generators, aborting on the first error; scikit-learn's
GridSearchCV runs on the cluster's workers."""

import os
import subprocess
import sys
import threading
import time

import joblib
import numpy as np
import pytest
from joblib import Parallel, delayed, parallel_backend, parallel_config

import nbcluster
from nbcluster.patterns.joblib_backend import NBClusterBackend
from nbcluster.testing import wait_for

N_WORKERS = 2   # as many as shared_cluster (tests/conftest.py) has


@pytest.fixture(scope="module")
def shared_client(shared_cluster):
    return shared_cluster.client()


@pytest.fixture(scope="module", autouse=True)
def stop_loky_workers():
    yield
    from joblib.externals.loky import reusable_executor
    if reusable_executor._executor is not None:
        reusable_executor._executor.shutdown(wait=True, kill_workers=True)


def both(call, client):
    """call() under loky and under nbcluster (2 workers each): (loky's result, ours)."""
    with parallel_config(backend="loky", n_jobs=N_WORKERS):
        reference = call()
    with parallel_config(backend="nbcluster", client=client):
        ours = call()
    return reference, ours


def done_counts(client) -> int:
    return sum(w["done"] for w in client.workers())


# ---- what the tasks run (module level: workers import them by reference) -------------------
def square(x):
    return x * x


def combine(a, b=0, *, scale=1, **extra):
    return (a + b) * scale, sorted(extra.items())


def array_stats(arr, factor):
    return float((arr * factor).sum()), arr.dtype.str, arr.shape


def raise_it(kind, i):
    if i == 3:
        raise kind
    return i


def fail_first_else_sleep(i, seconds, marker_dir):
    if i == 0:
        raise ValueError("the first task fails")
    open(os.path.join(marker_dir, str(i)), "w").close()   # this task started
    import time
    time.sleep(seconds)
    return i


class PayloadError(Exception):
    def __init__(self, code, detail):
        super().__init__(code, detail)
        self.code, self.detail = code, detail


# ---- results identical to loky's --------------------------------------------------------------
CASES = {
    "list": lambda: Parallel()(delayed(square)(i) for i in range(50)),
    "n_jobs=-1": lambda: Parallel(n_jobs=-1)(delayed(square)(i) for i in range(50)),
    "n_jobs=2": lambda: Parallel(n_jobs=2)(delayed(square)(i) for i in range(50)),
    "kwargs": lambda: Parallel()(delayed(combine)(i, b=i, scale=3, self=1, fn=2, labels="x")
                                 for i in range(30)),
    "batch_size=1": lambda: Parallel(batch_size=1)(delayed(square)(i) for i in range(40)),
    "batch_size=7": lambda: Parallel(batch_size=7)(delayed(square)(i) for i in range(100)),
    "batch_size=auto, many tiny": lambda: Parallel(batch_size="auto")(
        delayed(square)(i) for i in range(3000)),
    "pre_dispatch=all": lambda: Parallel(pre_dispatch="all")(delayed(square)(i) for i in range(60)),
    "lambda and closure": lambda: (lambda k: Parallel()(delayed(lambda x: x + k)(i)
                                                      for i in range(20)))(5),
    "numpy argument": lambda: Parallel()(delayed(array_stats)(np.arange(200_000.0), f)
                                         for f in range(6)),
    "generator": lambda: list(Parallel(return_as="generator")(
        delayed(square)(i) for i in range(80))),
    "generator_unordered": lambda: sorted(Parallel(return_as="generator_unordered")(
        delayed(square)(i) for i in range(80))),
    "empty": lambda: Parallel()(delayed(square)(i) for i in range(0)),
    "n_jobs=1 runs here": lambda: Parallel(n_jobs=1)(delayed(os.getpid)() for _ in range(3)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_results_are_identical_to_lokys(case, shared_client):
    reference, ours = both(CASES[case], shared_client)
    assert ours == reference


def test_parallel_reused_as_a_context_manager(shared_client):
    def call():
        with Parallel(n_jobs=2) as parallel:
            return parallel(delayed(square)(i) for i in range(30)), \
                parallel(delayed(combine)(i, scale=2) for i in range(30))
    reference, ours = both(call, shared_client)
    assert ours == reference


def test_tasks_run_on_the_workers_batched(shared_client):
    pids = {w["pid"] for w in shared_client.workers()}
    before = done_counts(shared_client)
    with parallel_config(backend="nbcluster", client=shared_client):
        ran_in = Parallel(batch_size=10)(delayed(os.getpid)() for _ in range(200))
    assert set(ran_in) <= pids
    tasks = done_counts(shared_client) - before
    assert 0 < tasks <= 200 // 2   # batches of ~10 calls are one task each


def test_auto_batching_groups_tiny_calls(shared_client):
    before = done_counts(shared_client)
    with parallel_config(backend="nbcluster", client=shared_client):
        assert Parallel()(delayed(square)(i) for i in range(3000)) == [i * i for i in range(3000)]
    assert done_counts(shared_client) - before < 3000


def test_joblib_callbacks_never_run_on_the_clients_io_thread(shared_client):
    """joblib pulls the next items of the user's iterator in its batch callback: that user
    code must not run on (and delay) the client's I/O thread."""
    pulled_by = []

    def calls():
        for i in range(30):
            pulled_by.append(threading.current_thread().name)
            yield delayed(square)(i)
    with parallel_config(backend="nbcluster", client=shared_client):
        assert Parallel(batch_size=1, pre_dispatch="2")(calls()) == [i * i for i in range(30)]
    assert "nbcluster-client" not in pulled_by
    assert any(name.startswith("nbcluster-joblib") for name in pulled_by)


def test_default_is_the_latest_cluster_with_parallel_backend(cluster):
    client = cluster.client()   # the latest client: what operations given none use
    pids = {w["pid"] for w in client.workers()}
    with parallel_backend("nbcluster"):
        ran_in = Parallel()(delayed(os.getpid)() for _ in range(20))
    assert set(ran_in) <= pids


def test_a_cluster_can_be_given_in_place_of_a_client(shared_cluster):
    pids = {w["pid"] for w in shared_cluster.default_client().workers()}
    with parallel_config(backend="nbcluster", client=shared_cluster):
        assert set(Parallel()(delayed(os.getpid)() for _ in range(10))) <= pids


def test_n_jobs_counts_worker_slots(shared_client):
    with parallel_config(backend="nbcluster", client=shared_client):
        assert joblib.effective_n_jobs() == N_WORKERS
        assert joblib.effective_n_jobs(-1) == N_WORKERS
        assert joblib.effective_n_jobs(-2) == N_WORKERS - 1
        assert joblib.effective_n_jobs(8) == N_WORKERS
        with pytest.raises(ValueError):
            Parallel(n_jobs=0)(delayed(square)(i) for i in range(2))


def test_a_closed_client_is_a_clear_error(shared_cluster):
    client = shared_cluster.client()
    client.close()
    with parallel_config(backend="nbcluster", client=client):
        with pytest.raises(RuntimeError, match="client given to joblib is closed"):
            Parallel()(delayed(square)(i) for i in range(4))


def test_an_unknown_backend_option_is_refused():
    with pytest.raises(TypeError, match="clinet"):
        with parallel_config(backend="nbcluster", clinet=None):
            pass


# ---- errors ------------------------------------------------------------------------------------
ERRORS = [KeyError("k"), ValueError("bad value"), ZeroDivisionError("division by zero"),
          FileNotFoundError(2, "No such file or directory", "/nope"), TypeError("wrong type"),
          PayloadError(42, "details")]


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: type(e).__name__)
@pytest.mark.parametrize("return_as", ["list", "generator"])
def test_errors_arrive_as_the_remote_type(error, return_as, shared_client):
    def call():
        try:
            list(Parallel(return_as=return_as)(delayed(raise_it)(error, i) for i in range(10)))
        except Exception as e:   # noqa: BLE001 - the error is what is compared
            return e
        raise AssertionError("no error")
    reference, ours = both(call, shared_client)
    assert isinstance(ours, type(reference))
    assert str(reference) in str(ours)
    with pytest.raises(type(error)):
        raise ours   # `except KeyError` catches it


def test_remote_traceback_starts_at_the_users_function(shared_client):
    with parallel_config(backend="nbcluster", client=shared_client):
        with pytest.raises(KeyError) as info:
            Parallel()(delayed(raise_it)(KeyError("k"), i) for i in range(5))
    assert info.value.frames[0].name == "raise_it"


@pytest.mark.timeout(180)
def test_timeout_is_a_timeout_error_and_cancels(cluster):
    def call():
        try:
            Parallel(n_jobs=2, timeout=1)(delayed(time.sleep)(60) for _ in range(6))
        except Exception as e:   # noqa: BLE001 - the error is what is compared
            return e
    client = cluster.client()
    reference, ours = both(call, client)
    assert type(ours) is type(reference)   # joblib's own (multiprocessing's) TimeoutError
    status = client.status()   # sent after the cancels, on the same socket
    assert (status["queued"], status["running"]) == (0, 0), status


def test_unpicklable_argument_fails_instead_of_hanging(shared_client):
    """A batch that cannot be pickled, dispatched from joblib's callback thread after the
    first batches came back, reaches the caller as its error."""
    items = [delayed(square)(i) for i in range(20)] + [delayed(square)(threading.Lock())]
    with parallel_config(backend="nbcluster", client=shared_client):
        with pytest.raises(nbcluster.PicklingError, match=r"joblib call.*_thread\.lock"):
            Parallel(n_jobs=2, batch_size=1, pre_dispatch="2")(iter(items))
        # and the backend keeps working
        assert Parallel()(delayed(square)(i) for i in range(5)) == [0, 1, 4, 9, 16]


@pytest.mark.timeout(180)
def test_first_error_cancels_the_rest_on_the_workers(cluster, tmp_path):
    client = cluster.client()
    before = done_counts(client)
    n = 40
    with parallel_config(backend="nbcluster", client=client):
        with pytest.raises(ValueError, match="the first task fails"):
            Parallel(batch_size=1, pre_dispatch="all")(
                delayed(fail_first_else_sleep)(i, 1.0, str(tmp_path)) for i in range(n))
    status = client.status()   # sent after the cancels, on the same socket
    assert (status["queued"], status["running"]) == (0, 0), status
    wait_for(lambda: all(w["state"] == "idle" for w in client.workers()), 60,
             what="the workers to be idle")
    started = len(os.listdir(tmp_path))
    assert started < n // 2, f"{started} of {n - 1} slow tasks ran after the first error"
    assert done_counts(client) - before < n // 2
    # The backend and both workers serve the next call.
    pids = {w["pid"] for w in client.workers()}
    with parallel_config(backend="nbcluster", client=client):
        assert set(Parallel(batch_size=1)(delayed(os.getpid)() for _ in range(20))) <= pids


@pytest.mark.timeout(180)
def test_dropping_a_generator_cancels_its_tasks(cluster, tmp_path):
    client = cluster.client()
    with parallel_config(backend="nbcluster", client=client):
        gen = Parallel(batch_size=1, pre_dispatch="all", return_as="generator")(
            delayed(fail_first_else_sleep)(i, 1.0, str(tmp_path)) for i in range(1, 41))
        assert next(gen) == 1
        with pytest.warns(UserWarning):   # joblib warns that results were left unused
            gen.close()
    status = client.status()
    assert (status["queued"], status["running"]) == (0, 0), status


def test_no_worker_for_this_client_is_a_clear_error(shared_cluster):
    with nbcluster.Client(shared_cluster.endpoint, shared_cluster.key, labels=["gpu"],
                          remember=False) as client:
        with parallel_config(backend="nbcluster", client=client, wait_for_workers_timeout=1):
            with pytest.raises(TimeoutError, match=r"no worker .* wait_for_workers_timeout"):
                Parallel()(delayed(square)(i) for i in range(4))
        assert client.status()["queued"] == 0   # the probe task was withdrawn


# ---- scikit-learn ------------------------------------------------------------------------------
@pytest.mark.timeout(300)
def test_grid_search_runs_on_the_workers_and_matches_loky(shared_client, tmp_path):
    from sklearn.base import BaseEstimator, ClassifierMixin
    from sklearn.datasets import load_digits
    from sklearn.model_selection import GridSearchCV
    from sklearn.svm import SVC

    class PidLoggingSVC(ClassifierMixin, BaseEstimator):
        """SVC that leaves a file named after the process of each fit (travels by value)."""

        def __init__(self, C=1.0, gamma="scale", log_dir=None):
            self.C, self.gamma, self.log_dir = C, gamma, log_dir

        def fit(self, X, y):
            import os
            import uuid
            self.model_ = SVC(C=self.C, gamma=self.gamma).fit(X, y)
            self.classes_ = self.model_.classes_
            open(os.path.join(self.log_dir, f"{os.getpid()}-{uuid.uuid4().hex}"), "w").close()
            return self

        def predict(self, X):
            return self.model_.predict(X)

    X, y = load_digits(return_X_y=True)
    grid = {"C": [0.1, 1, 10], "gamma": [1e-3, 1e-4]}

    def search(log_dir):
        os.makedirs(log_dir)
        return GridSearchCV(PidLoggingSVC(log_dir=log_dir), grid, n_jobs=-1, cv=3).fit(X, y)

    with parallel_config(backend="loky"):
        reference = search(str(tmp_path / "loky"))
    with parallel_config(backend="nbcluster", client=shared_client):
        ours = search(str(tmp_path / "nbcluster"))
    assert ours.best_params_ == reference.best_params_
    assert list(ours.cv_results_["mean_test_score"]) == \
        list(reference.cv_results_["mean_test_score"])
    fit_pids = [int(name.split("-")[0]) for name in os.listdir(tmp_path / "nbcluster")]
    worker_pids = {w["pid"] for w in shared_client.workers()}
    # 6 candidates x 3 folds fitted on the workers, the final refit here
    assert sorted(p for p in fit_pids if p not in worker_pids) == [os.getpid()]
    assert sum(p in worker_pids for p in fit_pids) == 6 * 3


# ---- registration ------------------------------------------------------------------------------
REGISTERED = """
import sys
{first}
import joblib
print("joblib imported by nbcluster:", {joblib_before})
print("registered:", "nbcluster" in joblib.parallel.BACKENDS)
with joblib.parallel_config(backend="nbcluster"):
    print("active:", type(joblib.parallel.get_active_backend()[0]).__name__)
print("Parallel:", type(joblib.Parallel(backend="nbcluster")._backend).__name__)
"""


@pytest.mark.parametrize("order", ["nbcluster first", "joblib first", "sklearn first"])
def test_import_nbcluster_registers_without_importing_joblib(order):
    first = {"nbcluster first": "import nbcluster; joblib_before = 'joblib' in sys.modules",
             "joblib first": "import joblib; import nbcluster; joblib_before = False",
             "sklearn first": "import nbcluster; joblib_before = 'joblib' in sys.modules\n"
                              "import sklearn.model_selection"}[order]
    code = REGISTERED.format(first=first, joblib_before="joblib_before")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert out.splitlines() == ["joblib imported by nbcluster: False", "registered: True",
                                "active: NBClusterBackend", "Parallel: NBClusterBackend"]


def test_register_joblib_is_public_and_idempotent():
    nbcluster.register_joblib()
    nbcluster.register_joblib()
    assert joblib.parallel.BACKENDS["nbcluster"] is NBClusterBackend
