"""Frames ``(type, body, *raw)`` <-> msgspec structs, for any table of message types.

``type`` is a short ASCII tag, ``body`` the msgpack of exactly that type's struct, ``raw`` the
zero-copy payload frames its body declares. A body decodes into exactly its declared struct or
raises ``ProtocolError`` naming the problem; nothing is pickled. The daemon's protocol
(``wire/protocol.py``) and the geo service's (``geo/protocol.py``) are two tables of one codec.
"""
from __future__ import annotations

import msgspec


class ProtocolError(Exception):
    """A message that cannot be served: ``code`` says which kind, ``message`` what to fix."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class Codec:
    def __init__(self, *tables: dict[bytes, type]):
        self.types: dict[bytes, type] = {t: c for table in tables for t, c in table.items()}
        self.tags: dict[type, bytes] = {c: t for t, c in self.types.items()}
        self._encoder = msgspec.msgpack.Encoder()
        self._decoders = {t: msgspec.msgpack.Decoder(c) for t, c in self.types.items()}

    def encode(self, msg) -> list:
        """Struct -> [type, body] frames (append raw frames after)."""
        return [self.tags[type(msg)], self._encoder.encode(msg)]

    def decode(self, tag: bytes, body, table: dict[bytes, type]):
        """One body of a type from ``table``; raises ``ProtocolError`` naming the problem."""
        tag = bytes(tag)
        if tag not in table:
            raise ProtocolError("BAD_FRAME", f"unknown message type {tag[:32]!r}; expected one "
                                f"of {', '.join(t.decode() for t in table)}")
        name = tag.decode()
        try:
            return self._decoders[tag].decode(body)
        except msgspec.ValidationError as e:
            raise ProtocolError("BAD_MESSAGE", f"{name}: {e}") from None
        except msgspec.DecodeError as e:
            raise ProtocolError("BAD_MESSAGE", f"{name}: body is not valid msgpack ({e})") from None
        except UnicodeDecodeError as e:  # a str field that is not UTF-8 (found by fuzzing)
            raise ProtocolError("BAD_MESSAGE", f"{name}: a string is not UTF-8 ({e})") from None
