"""The processes on a worker host: the worker and the supervisor that starts and keeps them.

`loop` is the worker (pulls tasks and runs them): its `task_thread` runs tasks, its `io_thread`
registers and heartbeats, both share `state`; `output` captures what a task prints, `main` is
its command line. `cells` is the IPython shell that runs notebook cells, `supervisor` one small
process per host, `procinfo` what it reads from /proc.
Run them with `python -m nbcluster.worker` and `python -m nbcluster.worker.supervisor_main`.

May import: `nbcluster.wire`, `nbcluster.errors`, `nbcluster.runtime`, `nbcluster.version`.
Never client, cluster, patterns or notebook code.
"""
