"""ZeroMQ transport shared by the daemon, the client library and the geo service: ``sockets``
(the one helper that makes every socket, endpoints, the per-user runtime directory) and
``keys`` (CURVE key pairs)."""
