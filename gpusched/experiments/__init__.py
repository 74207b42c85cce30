"""Experiments in virtual time: the daemon's scheduler core on the simulated GPU."""
