"""The geo planner's error for a mistake in a spec (raised by the parser and the WAN lookup)."""


class GeoSpecError(ValueError):
    """A mistake in a spec: the message names the file, line and field."""
