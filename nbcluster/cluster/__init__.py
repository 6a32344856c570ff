"""Starting a cluster's processes: on this machine (`local`, `local_workers`,
`broker_process`), and on others through SSH and Slurm (`launchers`).

May import: the client, broker and worker packages (to start them), `nbcluster.wire`,
`nbcluster.errors`. Never patterns or notebook code.
"""
