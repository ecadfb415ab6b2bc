"""The shared token that authorises changes to what is served (``POST /v1/update``).

``monolith serve`` and the trainer pushing to it (``monolith train --serving-url``) read the same
token: from a file (``--token-file`` / ``--serving-token-file``), else from the environment
variable :data:`TOKEN_ENV`. The trainer sends it as ``Authorization: Bearer <token>``; the server
compares it in constant time. A server listening beyond loopback must have one.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import re

__all__ = ["TOKEN_ENV", "authorization", "is_authorized", "is_loopback", "read_token"]

#: The environment variable holding the token when no token file is given.
TOKEN_ENV = "MONOLITH_SERVING_TOKEN"
#: Fewer characters are refused: a short token is guessed.
MIN_TOKEN_LENGTH = 16
# Visible ASCII only, so that the token travels unchanged in an HTTP header.
_TOKEN = re.compile(r"[\x21-\x7e]+")


def read_token(token_file: str | os.PathLike | None = None) -> str | None:
    """The token in ``token_file`` (surrounding whitespace stripped) if given, else ``$MONOLITH_SERVING_TOKEN``,
    else None.

    Raises:
        ValueError: the file cannot be read, or the token is shorter than 16 characters or holds
            characters other than visible ASCII (the message names where it came from).
    """
    if token_file is not None:
        source = f"token file {os.fspath(token_file)}"
        try:
            with open(token_file, encoding="ascii") as file:
                token = file.read().strip()
        except (OSError, UnicodeDecodeError) as error:
            raise ValueError(f"{source} cannot be read: {error}") from None
    else:
        source, token = f"${TOKEN_ENV}", os.environ.get(TOKEN_ENV)
        if token is None:
            return None
        token = token.strip()
    if len(token) < MIN_TOKEN_LENGTH or not _TOKEN.fullmatch(token):
        raise ValueError(f"{source} must hold a token of at least {MIN_TOKEN_LENGTH} visible ASCII characters "
                         f"(no spaces), got {len(token)} characters")
    return token


def authorization(token: str) -> dict[str, str]:
    """The request header carrying ``token``."""
    return {"Authorization": f"Bearer {token}"}


def is_authorized(header: str | None, token: str) -> bool:
    """Whether an ``Authorization`` header value carries ``token``, compared in constant time."""
    given = (header or "").encode("latin-1", "replace")
    return hmac.compare_digest(given, f"Bearer {token}".encode("ascii"))


def is_loopback(host: str) -> bool:
    """Whether listening on ``host`` is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost may resolve to any interface
        return False
