"""What dltrain must not write down or print: the values of secret-looking config keys, and credentials in URLs.

- A key is secret-looking when one of the words of its name (split at `_`, `-`, `.` and camelCase) is key, apikey,
  secret, password, passwd, pwd, passphrase, token, credential(s), auth, authorization, cookie, signature or
  private: `api_key`, `apiKey`, `Authorization`, `client_secret`, `access_token`, `X-Api-Token`, ... Every string
  or number under such a key (in nested mappings and lists too) is replaced by ***.
- A URL's user information, `scheme://user:password@host` or `scheme://token@host` (`s3://KEY:SECRET@bucket`
  alike), is replaced by ***: `https://***@host`, in any value and any text.
- The values so replaced (of SCRUBBED_FROM characters and more) are scrubbed from the logs dltrain stores and
  relays and from its error messages (Scrubber).
"""

import re
from collections.abc import Iterable
from typing import Any

REDACTED = "***"
_SECRET_WORDS = {
    "key", "keys", "apikey", "secret", "secrets", "password", "passwords", "passwd", "pwd", "passphrase", "token",
    "tokens", "credential", "credentials", "auth", "authorization", "cookie", "cookies", "signature", "private",
}  # fmt: skip
_WORD = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")
# scheme://USERINFO@: a user name, and a password that may hold anything but white space and @ (an AWS secret
# holds / and +); the text up to the last @ of a token is taken, so a mistake hides too much, never too little.
_URL_CREDENTIALS = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^\s/?#@:]*(?::[^\s@]*)?)@")
# Shorter redacted values are not scrubbed from logs and messages: "1" or "abc" would hide ordinary text everywhere.
SCRUBBED_FROM = 4


def is_secret_key(name: Any) -> bool:
    """Whether a config key's name says that its value is a secret."""
    return any(word.lower() in _SECRET_WORDS for word in _WORD.findall(str(name)))


def scrub_urls(text: str) -> str:
    """`text` with the user information of every URL in it replaced by ***."""
    return _URL_CREDENTIALS.sub(rf"\g<scheme>{REDACTED}@", text)


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float)) and not isinstance(value, bool)


def redact(config: Any, secret: bool = False) -> Any:
    """A copy of `config` with the values of secret-looking keys (all of them: `secret`) replaced by ***, and the
    credentials of URLs in any string."""
    if isinstance(config, dict):
        return {key: redact(value, secret or is_secret_key(key)) for key, value in config.items()}
    if isinstance(config, list):
        return [redact(value, secret) for value in config]
    if secret and _is_scalar(config):
        return REDACTED
    return scrub_urls(config) if isinstance(config, str) else config


def _secrets(config: Any, secret: bool = False) -> Iterable[str]:
    """The texts redact() replaces in `config`: whole values of secret keys, and URLs' user information."""
    if isinstance(config, dict):
        for key, value in config.items():
            yield from _secrets(value, secret or is_secret_key(key))
    elif isinstance(config, list):
        for value in config:
            yield from _secrets(value, secret)
    elif secret and _is_scalar(config):
        yield str(config)
    elif isinstance(config, str):
        for match in _URL_CREDENTIALS.finditer(config):
            yield match["userinfo"]
            yield match["userinfo"].partition(":")[2]


def redacted_paths(config: Any, path: str = "") -> list[str]:
    """The dotted keys whose values a saved (redacted) config no longer holds whole: *** or a URL's ***@ (a list
    holding one is named as a whole)."""
    if isinstance(config, dict):
        return [found for key, value in config.items() for found in redacted_paths(value, f"{path}{key}.")]
    if isinstance(config, list):
        return [path.rstrip(".")] if any(redacted_paths(value, "x") for value in config) else []
    if isinstance(config, str) and (config == REDACTED or f"://{REDACTED}@" in config):
        return [path.rstrip(".")]
    return []


class Scrubber:
    """Replaces, in text, the values a config's redaction hides (of SCRUBBED_FROM characters and more), and every
    URL's credentials."""

    def __init__(self, config: Any = None):
        found = {value for value in _secrets(config) if len(value) >= SCRUBBED_FROM}
        self.values = sorted(found, key=len, reverse=True)  # a value inside a longer one goes with it

    def __call__(self, text: str) -> str:
        for value in self.values:
            text = text.replace(value, REDACTED)
        return scrub_urls(text)

    def bytes(self, data: bytes) -> bytes:
        """The same for a log's bytes (UTF-8, with whatever else it holds kept as it is)."""
        return self(data.decode("utf-8", "surrogateescape")).encode("utf-8", "surrogateescape")
