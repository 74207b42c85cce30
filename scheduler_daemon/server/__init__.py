"""The daemon's request handling without I/O: sessions, handlers, quotas, answers, drain."""
