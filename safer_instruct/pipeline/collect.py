"""Stage 1, collect: read sources, normalise, drop empty/over-long, scrub personal data, dedupe, decontaminate."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

from safer_instruct.errors import SaferInstructError
from safer_instruct.pipeline.clean import Decontaminator, NearDuplicates, exact_key, normalise, scrub_pii
from safer_instruct.pipeline.config import CleanConfig, SourceConfig
from safer_instruct.pipeline.contract import Context, Stage, setting
from safer_instruct.pipeline.records import stable_id, with_stage
from safer_instruct.pipeline.store import ItemResult
from safer_instruct.readers import Row, file_digest, read_hub, read_rows, text_field

STAGE = "collect"


@dataclass(frozen=True)
class RawResponse:
    """A source row before cleaning."""

    source: str
    source_id: str
    category: str
    text: str
    where: str


def load_source(source: SourceConfig) -> list[RawResponse]:
    """Read one source, checking every row's fields (errors name file, line and field)."""
    required = [source.text_column] + [c for c in (source.id_column, source.category_column) if c]
    rows: list[Row] = (
        read_rows(source.path, required)
        if source.path
        else read_hub(source.hub, source.hub_config, source.split, required)
    )
    rows = rows[: source.limit] if source.limit else rows
    seen: dict[str, str] = {}
    responses = []
    for number, row in enumerate(rows, start=1):
        source_id = text_field(row, source.id_column) if source.id_column else str(number)
        if source_id in seen:
            raise SaferInstructError(
                f"{row.where}: field {source.id_column!r}: id {source_id!r} repeats ({seen[source_id]})"
            )
        seen[source_id] = row.where
        category = source.category or text_field(row, source.category_column).strip()
        responses.append(
            RawResponse(
                source.name, source_id, category, text_field(row, source.text_column, required=False), row.where
            )
        )
    return responses


def source_digest(source: SourceConfig) -> str:
    """What identifies a source's content (file hash, or Hub id and split)."""
    return file_digest(source.path) if source.path else f"{source.hub}:{source.hub_config}:{source.split}"


def collect(responses: list[RawResponse], clean: CleanConfig, decontaminator: Decontaminator) -> list[ItemResult]:
    """Clean every response; each becomes one result: kept (one output record) or dropped with a reason."""
    return list(iter_collect(responses, clean, decontaminator))


def iter_collect(
    responses: list[RawResponse], clean: CleanConfig, decontaminator: Decontaminator
) -> Iterator[ItemResult]:
    """``collect``, one result at a time (a build stores them in chunks: memory stays flat)."""
    exact: set[str] = set()
    near = NearDuplicates(clean.near_duplicate_threshold, clean.shingle_chars)
    for seq, raw in enumerate(responses):
        key = stable_id(raw.source, raw.source_id)
        text = normalise(raw.text)
        pii: dict[str, int] = {}
        if clean.scrub_pii:
            text, found = scrub_pii(text)
            pii = dict(found)
        reason = _drop_reason(text, clean, decontaminator, exact, near, key)
        result = ItemResult(key=key, seq=seq, category=raw.category)
        if reason:
            result.drops.append(reason)
        else:
            record: dict[str, Any] = {
                "key": key,
                "source": raw.source,
                "source_id": raw.source_id,
                "category": raw.category,
                "response": text,
            }
            result.outputs.append(with_stage(record, STAGE, {}, {"pii_scrubbed": pii}))
        yield result


def whole_set(ctx: Context, llm: None = None) -> Iterator[ItemResult]:
    """Clean every source row; duplicates are found across the whole set."""
    return iter_collect(ctx.inputs.responses, ctx.config.clean, ctx.inputs.decontaminator)


CONTRACT = Stage(
    name=STAGE,
    upstream=None,
    reads=("source", "source_id", "category", "text"),
    writes=("key", "source", "source_id", "category", "response"),
    covers=(
        setting("the sources' contents", lambda ctx: ctx.inputs.digest["sources"]),
        setting("the eval sets' contents", lambda ctx: ctx.inputs.digest["eval_sets"]),
        setting("`sources` (paths aside)", lambda ctx: [s.model_dump(exclude={"path"}) for s in ctx.config.sources]),
        setting("`clean`", lambda ctx: ctx.config.clean.model_dump()),
        setting(
            "`decontaminate` (eval set paths aside)",
            lambda ctx: ctx.config.decontaminate.model_dump(exclude={"eval_sets"}),
        ),
    ),
    whole_set=whole_set,
)


def _drop_reason(
    text: str, clean: CleanConfig, decontaminator: Decontaminator, exact: set[str], near: NearDuplicates, key: str
) -> str | None:
    if not text:
        return "empty"
    if len(text) < clean.min_chars:
        return "too_short"
    if len(text) > clean.max_chars:
        return "too_long"
    if decontaminator.overlap(text):
        return "contaminated"
    digest = exact_key(text)
    if digest in exact:
        return "duplicate"
    exact.add(digest)
    if near.first_match(key, text):
        return "near_duplicate"
    return None
