"""The wire: every message both sides exchange, as msgspec structs, and their codec.

This package imports only msgspec, so the client library, the geo service and the daemon share
it without loading each other: ``protocol`` (the daemon's messages), ``codec`` (framing, errors),
``tensors``, ``kernels``, ``graph`` (captured models), ``eager`` (intercepted ops), ``cuda``
(raw CUDA models) and ``ops`` (the aten ops the daemon runs).
"""
