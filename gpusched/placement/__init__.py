"""USHER-style placement of inference models onto GPUs (issue 5).

``spec`` reads the workload YAML and the GPU pool; ``estimate`` turns profiles and the fitted
interference model into replica configurations; ``fit`` holds the one feasibility rule every
solver and the daemon's admission share; ``heuristic``, ``cpsat`` and ``baselines`` solve;
``replay`` validates a plan on simulated GPUs; ``report`` and ``plot`` show it.
"""
