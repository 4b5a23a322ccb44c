"""The fixed by-subject split every bundled model is trained, selected and tested with.

Subjects, not windows, are split: a wearer's windows in both train and test would let the
network recognise the person rather than the activity and inflate accuracy.
Test subjects are never used for training or for any choice (epochs, hyper-parameters).
"""

from __future__ import annotations

from collections.abc import Sequence

TEST_SUBJECTS = (1608, 1615, 1623, 1630, 1641, 1649)
VALIDATION_SUBJECTS = (1603, 1611, 1619, 1626, 1635, 1646)


def split_subjects(
    available: Sequence[int],
    pool: Sequence[int] | None = None,
    validation: Sequence[int] | None = None,
) -> tuple[list[int], list[int]]:
    """(train, validation) subjects; the default pool is every available subject but the test ones."""
    avail = set(available)
    chosen = sorted(set(pool) & avail) if pool else sorted(avail - set(TEST_SUBJECTS))
    if validation:
        val = sorted(set(validation) & avail)
    else:
        val = [s for s in chosen if s in VALIDATION_SUBJECTS]
        if not val and len(chosen) > 1:
            val = chosen[-max(1, len(chosen) // 5) :]
    train = [s for s in chosen if s not in val]
    if not train:
        raise ValueError("no training subjects left after taking out the validation subjects")
    return train, val
