"""The reversed-instruction prompt: a response in, the instruction it answers out (the paper's template).

The reversed model is trained on it (``training.data``) and the build induces instructions with it
(``pipeline.induce``); the dataset card shows it with its hash.
"""

from __future__ import annotations

from safer_instruct.prompts import as_data

# The reversed-instruction template, verbatim from the paper (arXiv 2311.08685). The one copy in the kit.
REVERSE_TEMPLATE = (
    "Below is a response to a certain instruction. Write the instruction that the response is trying to complete."
    "\n\n### response:\n{output}\n\n### Instruction:\n"
)


def reverse_prompt(output: str) -> str:
    """The paper's reversed prompt for one response (its chat-template markers broken: the response is data)."""
    return REVERSE_TEMPLATE.format(output=as_data(output))
