"""Stage 7, assemble: TRL conversational preference rows + helpfulness pairs, a deterministic split, parquet.

``load_preferences(run_dir)`` reads a build's dataset back with its column types (the demo's reader).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

from safer_instruct.errors import SaferInstructError
from safer_instruct.pipeline.clean import Decontaminator, normalise
from safer_instruct.pipeline.config import AssembleConfig, HelpfulnessMixConfig
from safer_instruct.pipeline.contract import Context, Stage, setting
from safer_instruct.pipeline.records import ROW, names, stable_id
from safer_instruct.pipeline.store import ItemResult
from safer_instruct.readers import Row, text_field

STAGE = "assemble"
DATASET_DIR = "dataset"
SPLITS = ("train", "validation", "test")
HELPFULNESS = "helpfulness"


def features():
    """The column types of a preference row (so an empty ``rejected`` list keeps its type)."""
    from datasets import Features, List, Value

    text = Value("string")
    types = {"string": text, "json": text, "messages": List({"role": text, "content": text})}
    return Features({field.name: types[field.type] for field in ROW})


def safety_row(record: dict[str, Any]) -> dict[str, Any]:
    """A pipeline record that passed self-evaluation, as a preference row."""
    return {
        "id": record["key"],
        "prompt": [{"role": "user", "content": record["instruction"]}],
        "chosen": [{"role": "assistant", "content": record["expert"]}],
        "rejected": [{"role": "assistant", "content": record["response"]}],
        "category": record["category"],
        "kind": "safety",
        "source": record["source"],
        "source_id": record["source_id"],
        "provenance": json.dumps(record["provenance"], ensure_ascii=False, sort_keys=True),
    }


def helpfulness_row(row: Row, number: int, config: HelpfulnessMixConfig, source: str) -> dict[str, Any] | None:
    """One helpfulness pair as a preference row; None when a field is empty."""
    prompt, chosen, rejected = (
        normalise(text_field(row, c, False))
        for c in (config.prompt_column, config.chosen_column, config.rejected_column)
    )
    if not (prompt and chosen and rejected):
        return None
    return {
        "id": stable_id(source, str(number), prompt),
        "prompt": [{"role": "user", "content": prompt}],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
        "category": HELPFULNESS,
        "kind": HELPFULNESS,
        "source": source,
        "source_id": str(number),
        "provenance": json.dumps({"helpfulness": {"file": source, "row": number}}),
    }


def _order(row_id: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{row_id}".encode()).hexdigest()


def assemble(
    safety: list[dict[str, Any]],
    helpful: list[dict[str, Any] | None],
    ratio: float,
    seed: int,
    decontaminator: Decontaminator,
) -> list[ItemResult]:
    """Every candidate row becomes a result: kept, or dropped (contaminated, duplicate, empty, over_ratio)."""
    results: list[ItemResult] = []
    seen: set[str] = set()
    kept_safety = 0
    for seq, row in enumerate(safety):
        result = _check(row, seq, row["category"] if row else "unlabelled", decontaminator, seen, f"released-{seq}")
        kept_safety += bool(result.outputs)
        results.append(result)
    wanted = math.floor(ratio * kept_safety + 0.5)
    checked = [
        _check(row, len(safety) + i, HELPFULNESS, decontaminator, seen, f"helpfulness-{i}")
        for i, row in enumerate(helpful)
    ]
    usable = sorted((r for r in checked if r.outputs), key=lambda r: _order(r.key, seed))
    for result in usable[wanted:]:
        result.drops, result.outputs = ["over_ratio"], []
    return results + checked


def _check(
    row: dict[str, Any] | None,
    seq: int,
    category: str,
    decontaminator: Decontaminator,
    seen: set[str],
    fallback_key: str = "",
) -> ItemResult:
    result = ItemResult(key=row["id"] if row else fallback_key, seq=seq, category=category)
    if row is None:
        result.drops.append("empty")
    elif decontaminator.overlap(row["prompt"][-1]["content"]):
        result.drops.append("contaminated")
    elif row["id"] in seen:
        result.drops.append("duplicate")
    else:
        seen.add(row["id"])
        result.outputs.append(row)
    return result


def whole_set(ctx: Context, llm: None = None) -> list[ItemResult]:
    """The safety rows, the released rows and the helpfulness pairs at their ratio, checked and deduplicated."""
    safety = [safety_row(record) for record in ctx.store.outputs(CONTRACT.upstream)] + ctx.inputs.released
    ratio = ctx.config.helpfulness.ratio if ctx.config.helpfulness else 0.0
    return assemble(safety, ctx.inputs.helpfulness, ratio, ctx.config.seed, ctx.inputs.decontaminator)


CONTRACT = Stage(
    name=STAGE,
    upstream="self_evaluate",
    reads=("key", "source", "source_id", "category", "response", "instruction", "expert"),
    writes=names(ROW),
    covers=(
        setting("the helpfulness file's contents", lambda ctx: ctx.inputs.digest.get("helpfulness")),
        setting("the released files' contents", lambda ctx: ctx.inputs.digest["released"]),
        setting(
            "`helpfulness` (its path aside)",
            lambda ctx: ctx.config.helpfulness.model_dump(exclude={"path"}) if ctx.config.helpfulness else None,
        ),
        setting("`assemble`", lambda ctx: ctx.config.assemble.model_dump()),
        setting("`seed`", lambda ctx: ctx.config.seed),
    ),
    whole_set=whole_set,
)


def split_rows(
    rows: list[dict[str, Any]], test_fraction: float, seed: int, validation_fraction: float = 0.0
) -> dict[str, list[dict[str, Any]]]:
    """A deterministic split, per kind (so the safety:helpfulness mix holds in every split).

    ``validation`` is for choosing settings and checkpoints, ``test`` for a held-out loss; neither is trained on.
    """
    splits: dict[str, list[dict[str, Any]]] = {name: [] for name in SPLITS}
    for kind in sorted({row["kind"] for row in rows}):
        group = sorted((row for row in rows if row["kind"] == kind), key=lambda row: _order(row["id"], seed))
        n_test = min(_held_out(test_fraction, len(group)), len(group) - 1)  # training keeps at least one row
        n_validation = min(_held_out(validation_fraction, len(group)), len(group) - 1 - n_test)
        splits["test"].extend(group[:n_test])
        splits["validation"].extend(group[n_test : n_test + n_validation])
        splits["train"].extend(group[n_test + n_validation :])
    for name in SPLITS:
        splits[name].sort(key=lambda row: _order(row["id"], seed))
    return splits


def _held_out(fraction: float, size: int) -> int:
    """Rows a held-out split takes from a group: at least one when asked for and the group has two or more."""
    if fraction <= 0 or size < 2:
        return 0
    return max(1, round(fraction * size))


def write_dataset(
    rows: list[dict[str, Any]], run_dir: str | Path, config: AssembleConfig, seed: int
) -> dict[str, int]:
    """Write ``<run>/dataset/<split>-00000-of-00001.parquet`` (replacing earlier files); returns rows per written split.

    A split with no rows gets no file (a parquet file without rows cannot be loaded as a split) and no count.
    """
    out = Path(run_dir) / DATASET_DIR
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for name, split in split_rows(rows, config.test_fraction, seed, config.validation_fraction).items():
        target = out / f"{name}-00000-of-00001.parquet"
        if not split:
            target.unlink(missing_ok=True)
            continue
        counts[name] = len(split)
        partial = target.with_suffix(".parquet.partial")
        write_parquet(split, partial)
        partial.replace(target)
    if config.export_csv:
        from safer_instruct.pipeline.released import export_released

        export_released(rows, out / "safer_instruct.csv")
    return counts


def write_parquet(rows: list[dict[str, Any]], path: Path, chunk: int = 2000) -> None:
    """Rows to one parquet file with the preference features (and their Hub metadata), a row group per ``chunk`` rows.

    Converted a chunk at a time, the file costs little memory beyond the rows themselves (a whole-split
    ``Dataset.from_dict`` holds an Arrow copy of every row at once).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = features()
    schema = columns.arrow_schema
    with pq.ParquetWriter(str(path), schema) as writer:
        for start in range(0, len(rows), chunk):
            part = [{name: row[name] for name in columns} for row in rows[start : start + chunk]]
            writer.write_table(pa.Table.from_pylist(part, schema=schema))


def load_preferences(run_dir: str | Path):
    """The preference ``DatasetDict`` a build wrote under ``<run_dir>/dataset/`` (or that folder itself).

    Each file is checked before ``datasets`` reads it: one that is not parquet, or lacks a column of the row
    schema, is named with what is wrong.
    """
    from datasets import load_dataset

    folder = Path(run_dir)
    folder = folder / DATASET_DIR if (folder / DATASET_DIR).is_dir() else folder
    files = {name: sorted(folder.glob(f"{name}-*.parquet")) for name in SPLITS}
    files = {name: paths for name, paths in files.items() if paths}
    if not files:
        raise SaferInstructError(
            f"{folder}: no preference dataset here (expected train-*.parquet); run `safer-instruct build` first"
        )
    for path in (path for paths in files.values() for path in paths):
        check_preference_file(path)
    return load_dataset("parquet", data_files={k: [str(p) for p in v] for k, v in files.items()}, features=features())


def check_preference_file(path: Path) -> None:
    """Raise, naming the file, when it is not a readable parquet table with every column of a preference row."""
    import pyarrow
    import pyarrow.parquet

    rebuild = "rebuild the dataset with `safer-instruct build`"
    try:
        columns = set(pyarrow.parquet.read_schema(path).names)
    except (pyarrow.ArrowException, OSError) as err:
        raise SaferInstructError(f"{path}: not a readable parquet file ({err}); {rebuild}") from None
    missing = [name for name in names(ROW) if name not in columns]
    if missing:
        raise SaferInstructError(f"{path}: missing column(s) {', '.join(missing)}; {rebuild}")
