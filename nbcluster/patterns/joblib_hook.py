"""Make "nbcluster" a joblib backend name without importing joblib.

`import nbcluster` must stay light (joblib alone takes ~0.1 s to import), yet
`joblib.parallel_config(backend="nbcluster")` and `joblib.Parallel(backend="nbcluster")`
should work in any process that imported nbcluster, whichever of the two came first. So:

- joblib already imported: register now (nbcluster/joblib_backend.py; cheap then);
- otherwise: a one-shot import hook on sys.meta_path registers right after joblib's own
  package has been imported, then leaves sys.meta_path.

joblib's own lazy mechanism (`joblib.parallel.EXTERNAL_BACKENDS`, how "dask" is found)
lives inside joblib, so it cannot be used before joblib is imported, and it serves only
parallel_config/parallel_backend, not `Parallel(backend=...)`.
"""

from __future__ import annotations

import sys
import warnings

__all__ = ["register_joblib"]


def register_joblib() -> None:
    """Register nbcluster's joblib backend now (this imports joblib).

    Not needed after `import nbcluster`, which registers it when joblib gets imported; call
    it to fail early, with joblib's own error, if joblib cannot be imported.
    """
    from . import joblib_backend  # noqa: F401  (importing it registers the backend)


def _register_quietly() -> None:
    try:
        register_joblib()
    except Exception as e:   # noqa: BLE001 - never break `import joblib` because of us
        warnings.warn(f"nbcluster could not register its joblib backend: {e!r}; "
                      "call nbcluster.register_joblib() to see why", RuntimeWarning,
                      stacklevel=2)


class _AfterJoblibImport:
    """A sys.meta_path finder that finds nothing itself: it wraps the loader of the `joblib`
    package so the backend is registered once joblib's __init__ has run. (Not derived from
    importlib.abc.MetaPathFinder: importing that costs more than all of this module.)"""

    def find_spec(self, name, path=None, target=None):
        if name != "joblib":
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None   # joblib is not installed: nothing to do
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        exec_module = loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            _uninstall()
            _register_quietly()
        # wrapping this one loader's method is the point (mypy: assigning to a method)
        loader.exec_module = exec_then_register   # type: ignore[method-assign]
        return spec


def _is_hook(finder) -> bool:
    # by name, not class: a reloaded nbcluster must find (and not double) an earlier hook
    return type(finder).__name__ == "_AfterJoblibImport"


def _uninstall() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not _is_hook(f)]


def install() -> None:
    """Register now if joblib is imported, else when it gets imported (see the module doc)."""
    if "joblib" in sys.modules:
        _register_quietly()
    elif not any(_is_hook(f) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterJoblibImport())


install()
