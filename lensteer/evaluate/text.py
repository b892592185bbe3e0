"""How evaluation reads text: straightened quotes and lower-cased word runs, one definition for all scorers."""

import re

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def straighten(text: str) -> str:
    """Curly quotes and apostrophes replaced by straight ones (models emit both)."""
    return text.replace("\u2019", "'").replace("\u2018", "'").replace("\u201c", '"').replace("\u201d", '"')


def words_of(text: str) -> list[str]:
    """Lower-cased ``[a-z0-9]+('[a-z]+)?`` runs of the straightened text: the words scorers and
    repetition metrics count."""
    return _WORD.findall(straighten(text).lower())
