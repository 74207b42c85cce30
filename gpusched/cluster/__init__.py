"""gpusched on a cluster: a daemon per GPU of a Ray cluster, placement applied cluster-wide, a
router, and recovery from node loss (docs/cluster.md).

``route.py`` (the router's decision) and ``recovery.py`` (what to do with a dead daemon's
replicas) are pure and shared by the live path (``client.py``, ``controller.py``) and the
virtual-time simulation (``sim.py``). Ray is imported only where the cluster is touched.
"""
