"""Small real data shipped with tfbrain (see README.md here for provenance and licence)."""

import os

_HERE = os.path.dirname(os.path.abspath(__file__))


def studyforrest_localizer() -> dict:
    """Paths of the shipped studyforrest visual-localizer excerpt.

    Returns {"bold", "events", "sidecar", "license"}: a real 4D BOLD run, (40, 40, 17, 156)
    int16 at 6 x 6 x 6.6 mm, TR 1.79 s (2x2x2 block average of the original 80x80x35 run),
    its BIDS events.tsv, JSON sidecar and the PDDL licence. Public domain.
    """
    return {
        "bold": os.path.join(_HERE, "studyforrest_localizer_bold.nii.gz"),
        "events": os.path.join(_HERE, "studyforrest_localizer_events.tsv"),
        "sidecar": os.path.join(_HERE, "studyforrest_localizer_bold.json"),
        "license": os.path.join(_HERE, "LICENSE-PDDL.txt"),
    }
