"""Profilers of models' compute and memory demand (USHER-style); see issue 5.

Not built yet: this package holds the place the design card gives it.
"""
