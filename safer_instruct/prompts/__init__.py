"""Versioned prompt templates: one jinja2 file per prompt; the file's hash goes into provenance.

A template file (``<name>_v<N>.j2``) is a chat: each message starts with a line ``### system``,
``### user`` or ``### assistant``, so few-shot turns are written out in the file and the whole
prompt can be shown as is in the dataset card.

Values (source texts, induced instructions, answers) are data, never structure: the template is cut
into its messages before they are filled in, so a ``### assistant`` line inside a value stays text
in its message, and ``as_data`` breaks chat-template control markers (``<|im_start|>``, ``[INST]``,
...) so that no tokenizer reads them as turn boundaries.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path

import jinja2

from safer_instruct.errors import SaferInstructError

PROMPTS_DIR = Path(__file__).parent
ROLE_LINE = re.compile(r"^### (system|user|assistant)[ \t]*$", re.MULTILINE)
# control markers of common chat templates: ChatML / Llama 3 / Phi (<|...|>), Llama 2 ([INST], <<SYS>>, <s>), Gemma
CONTROL_MARKER = re.compile(r"<\|[A-Za-z0-9_.:/-]{1,40}\|>|</?s>|\[/?INST\]|<</?SYS>>|<(?:start|end)_of_turn>")
ZERO_WIDTH_SPACE = "\u200b"
_ENV = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False)


@dataclass(frozen=True)
class PromptTemplate:
    """A chat prompt template; ``sha`` identifies its exact text."""

    name: str
    path: Path
    text: str

    @property
    def sha(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()[:12]

    def render(self, **values: str) -> list[dict[str, str]]:
        """The chat messages with ``values`` filled in as data: the messages are the template's own."""
        parts = ROLE_LINE.split(self.text)
        data = {key: as_data(value) if isinstance(value, str) else value for key, value in values.items()}
        try:
            return [
                {"role": role, "content": compiled(body).render(**data).strip()}
                for role, body in zip(parts[1::2], parts[2::2])
            ]
        except jinja2.TemplateError as err:
            raise SaferInstructError(f"prompt template {self.path}: {type(err).__name__}: {err}") from err


@lru_cache(maxsize=256)
def compiled(body: str) -> jinja2.Template:
    """A message body's compiled template: compiling costs ~100x rendering, and every item renders the same bodies."""
    return _ENV.from_string(body)


def as_data(text: str) -> str:
    """``text`` with each chat-template control marker broken by a zero-width space: a tokenizer reads it as text."""
    return CONTROL_MARKER.sub(lambda match: match.group(0)[0] + ZERO_WIDTH_SPACE + match.group(0)[1:], text)


@cache
def load_template(name: str) -> PromptTemplate:
    """A shipped template by name (``judge_v1``) or a template file by path."""
    path = Path(name) if name.endswith(".j2") else PROMPTS_DIR / f"{name}.j2"
    if not path.is_file():
        shipped = ", ".join(sorted(p.stem for p in PROMPTS_DIR.glob("*.j2")))
        raise SaferInstructError(f"prompt template {name!r} not found (shipped: {shipped})")
    text = path.read_text(encoding="utf-8").strip() + "\n"
    roles = ROLE_LINE.findall(text)
    if not roles or not text.startswith("###") or roles[-1] != "user":
        raise SaferInstructError(
            f"prompt template {path}: must start with a `### system|user` line and end with a user turn"
        )
    return PromptTemplate(name=path.stem, path=path, text=text)
