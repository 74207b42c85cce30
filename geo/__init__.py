"""Geo-distributed training planner (MAST-style, OR-Tools); see issue 6.

Not built yet: this package holds the place the design card gives it.
"""
