"""The id alphabet: which strings may be a customer id, the same rule at every party.

PSI compares ids byte for byte (hashed), so two spellings of one person that look the
same to people (``José`` composed or as ``e`` + a combining accent, an id with a
zero-width space pasted in) would silently be two people and fall out of the
intersection (issue 15). Every party's table and every scoring request therefore
holds ids to one rule, and refuses (never rewrites) an id that breaks it:

* the id is in Unicode normalization form NFC (what nearly every system exports;
  normalizing the export fixes it);
* it holds no control or format character (Unicode categories Cc and Cf: tabs, line
  feeds, NUL, zero-width spaces and joiners, the byte order mark, bidi marks), no
  surrogate (Cs) and no line or paragraph separator (U+2028, U+2029);
* (checked by the table loader) it is not empty and has no leading or trailing
  whitespace.

Refusing rather than normalizing keeps every id exactly the bytes its owner holds, so
a bank and the platform never join on an id that neither of them has.
"""

from __future__ import annotations

import unicodedata

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["FORBIDDEN_CATEGORIES", "id_masks", "id_problem"]

FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
"""Unicode general categories no id may contain (see the module docstring)."""

_FORBIDDEN_RE = r"[\p{Cc}\p{Cf}\p{Cs}\p{Zl}\p{Zp}]"  # RE2, as pyarrow compiles it

NOT_NFC = "is not in Unicode NFC form; expected ids normalized to NFC"
FORBIDDEN = ("holds a control or format character (such as a tab, NUL or zero-width "
             "space); expected none")


def id_problem(value: str) -> str | None:
    """What is wrong with one id under the alphabet (a phrase to follow the id), or None."""
    if any(unicodedata.category(c) in FORBIDDEN_CATEGORIES for c in value):
        return FORBIDDEN
    if not unicodedata.is_normalized("NFC", value):
        return NOT_NFC
    return None


def id_masks(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(forbidden characters, not NFC) per id of a string array, vectorized; nulls are
    neither (the loader reports them as empty ids)."""
    def mask(values: pa.Array) -> np.ndarray:
        return np.asarray(pc.fill_null(values, False).to_numpy(zero_copy_only=False),
                          dtype=bool)

    forbidden = mask(pc.match_substring_regex(arr, _FORBIDDEN_RE))
    not_nfc = mask(pc.not_equal(pc.utf8_normalize(arr, "NFC"), arr)) & ~forbidden
    return forbidden, not_nfc
