"""Tests of nbcluster/notebook/: the magics in a kernel, the widgets in JupyterLab."""
