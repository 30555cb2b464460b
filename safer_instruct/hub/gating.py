"""The gating form of the dataset repo; the access policy reads the answers by these same names."""

from __future__ import annotations

from typing import Any

NAME = "Name"
AFFILIATION = "Affiliation"
COUNTRY = "Country"
INTENDED_USE = "Intended use"
AGREEMENT = "I will use this data only to make models safer, never to make them harmful, and will not share it"
INTENDED_USES = (
    "Safety research",
    "Training a safer model",
    "Evaluating model safety",
    "Education",
    "Other",
)
ALLOWED_USES = INTENDED_USES[:4]  # "Other" is left for a person to review

HEADING = "Request access to a dataset of harmful text"
BUTTON = "Request access"
PROMPT = (
    "This dataset contains harmful text ({contents}) "
    "paired with safe answers, built with Safer-Instruct for safety alignment. Because the data and the "
    "method are easy to misuse, every request is reviewed by the maintainers. Tell us who you are and "
    "what you will use it for; requests without an affiliation or with an unclear use may be declined. "
    "Do not redistribute the data."
)


def gating_metadata(contents: str) -> dict[str, Any]:
    """The ``extra_gated_*`` fields of the card YAML; ``contents`` names the kinds of harmful text in the data."""
    return {
        "extra_gated_heading": HEADING,
        "extra_gated_prompt": PROMPT.format(contents=contents or "see the content warning"),
        "extra_gated_button_content": BUTTON,
        "extra_gated_fields": {
            NAME: "text",
            AFFILIATION: "text",
            COUNTRY: "country",
            INTENDED_USE: {"type": "select", "options": list(INTENDED_USES)},
            AGREEMENT: "checkbox",
        },
    }
