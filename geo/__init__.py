"""Geo-distributed training planner (issue 6): plan training jobs over sites joined by a WAN.

spec (YAML -> typed structs) -> wan (link data) -> cost_model (seconds, dollars) ->
candidates (estimate) -> planner (CP-SAT solve) / decomposed / baselines -> plan (report) ->
plot; replan (events), state + protocol + service (ZeroMQ), bench. See docs/geo.md.
"""
