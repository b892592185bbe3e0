"""Which scorer produced a verdict: a name, a version and a digest of its rules or fitted parameters.

Every study row records the :class:`ScorerId` of the scorer that judged it, so two conditions are only
compared when the same scorer judged both (:func:`lensteer.study.report.build_report` refuses otherwise),
and a rule edit or a refit shows up as a new digest even when nobody bumped the version.
"""

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from lensteer.errors import DataError

LEGACY = "legacy"  # rows written before scorers were recorded


@dataclass(frozen=True, kw_only=True)
class ScorerId:
    """A scorer's identity.

    Attributes:
        name: What it is (``refusal-rule``, ``compassion-logreg``, ``judge:<model>@<url>``).
        version: Bumped by hand when its behaviour changes on purpose.
        digest: 12 hex digits of SHA-256 over its rules (patterns, thresholds) or over its fitted
            parameters (the compassion scorer: vocabulary, weights, bias, threshold, lexicon).
    """

    name: str
    version: str
    digest: str

    def to_dict(self) -> dict[str, str]:
        """Plain-JSON form (what a study row stores under ``scorer``)."""
        return {"name": self.name, "version": self.version, "hash": self.digest}

    @classmethod
    def from_dict(cls, data: Any) -> "ScorerId":
        """Read a row's ``scorer`` field back; a malformed one is a :class:`DataError`."""
        if not isinstance(data, dict) or not all(
            isinstance(data.get(k), str) for k in ("name", "version", "hash")
        ):
            raise DataError(f"a scorer record needs string fields name, version and hash, got {data!r}")
        return cls(name=data["name"], version=data["version"], digest=data["hash"])

    def __str__(self) -> str:
        return f"{self.name} v{self.version} ({self.digest})"


def rules_digest(*parts: Any) -> str:
    """12 hex digits of SHA-256 over ``parts`` as sorted JSON (strings, numbers, lists, dicts)."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]
