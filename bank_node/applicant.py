"""An applicant as a JSON document (``fedscore bank score``): read strictly, never guessed.

The document is one object with the keys of :data:`APPLICANT_KEYS`; only
``applicant_id`` is required. A key outside them is refused, naming it and the closest
known key: a misspelt ``requested_ammount`` silently ignored used to give the applicant
the grade's full limit (issue 15). A value of the wrong kind ("20k" for an amount) is
refused naming its key and what was expected.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc

from fedscore.errors import FedscoreError

__all__ = ["APPLICANT_KEYS", "Applicant", "ApplicantError", "applicant_from_json",
           "did_you_mean"]

APPLICANT_KEYS = ("applicant_id", "features", "consent_token", "requested_amount")


class ApplicantError(FedscoreError, ValueError):
    """An applicant document that cannot be scored as written; names the key."""

    code = grpc.StatusCode.INVALID_ARGUMENT


@dataclass(frozen=True)
class Applicant:
    """What a scoring request carries, checked: features as the strings the wire sends."""

    applicant_id: str
    features: dict[str, str] = field(default_factory=dict)
    consent_token: str = ""
    requested_amount: float = 0.0  # 0: no amount asked


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest known name, or "" when none is close."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _number(where: str, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ApplicantError(f"{where}: {key} = {value!r}; expected a number")
    try:
        x = float(value)
    except ValueError:
        raise ApplicantError(f"{where}: {key} = {value!r}; expected a number written in "
                             "digits (e.g. 20000, not 20k)") from None
    if not math.isfinite(x):
        raise ApplicantError(f"{where}: {key} = {value!r}; expected a finite number")
    return x


def applicant_from_json(doc: Any, where: str) -> Applicant:
    """The applicant of a parsed JSON document read from ``where`` (named in errors)."""
    if not isinstance(doc, dict):
        raise ApplicantError(f"{where}: expected a JSON object with {', '.join(APPLICANT_KEYS)}")
    for key in doc:
        if key not in APPLICANT_KEYS:
            raise ApplicantError(f"{where}: unknown key {key!r}{did_you_mean(key, APPLICANT_KEYS)};"
                                 f" expected only {', '.join(APPLICANT_KEYS)}")
    applicant_id = doc.get("applicant_id")
    if not isinstance(applicant_id, str) or not applicant_id:
        raise ApplicantError(f"{where}: applicant_id = {applicant_id!r}; expected a non-empty "
                             "string")
    raw = doc.get("features") or {}
    if not isinstance(raw, dict):
        raise ApplicantError(f"{where}: features = {raw!r}; expected an object of feature "
                             "name to value")
    features: dict[str, str] = {}
    for name, value in raw.items():
        if value is None:
            features[name] = ""
        elif isinstance(value, str):
            features[name] = value
        elif isinstance(value, int | float) and not isinstance(value, bool):
            features[name] = str(value)
        else:
            raise ApplicantError(f"{where}: features.{name} = {value!r}; expected a number, a "
                                 "string or null")
    token = doc.get("consent_token") or ""
    if not isinstance(token, str):
        raise ApplicantError(f"{where}: consent_token = {token!r}; expected a string")
    amount = 0.0
    if doc.get("requested_amount") is not None:
        amount = _number(where, "requested_amount", doc["requested_amount"])
        if amount < 0:
            raise ApplicantError(f"{where}: requested_amount = {doc['requested_amount']!r}; "
                                 "expected an amount >= 0")
    return Applicant(applicant_id, features, token, amount)
