"""The gated dataset release: parquet per category config, a card with the gating form, the funnel."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections import Counter
from contextlib import contextmanager
from pathlib import Path, PureWindowsPath
from typing import Any

import datasets
import yaml
from datasets import DatasetDict
from huggingface_hub import DatasetCard, DatasetCardData

from safer_instruct.errors import SaferInstructError
from safer_instruct.hub.cards import CITATION, PAPER_URL, markdown_table, read_json, sha256_short, template_path
from safer_instruct.hub.gating import gating_metadata
from safer_instruct.hub.release_dir import fresh_release_dir
from safer_instruct.pipeline.assemble import load_preferences
from safer_instruct.pipeline.records import ROW
from safer_instruct.prompts import load_template
from safer_instruct.prompts.reverse import REVERSE_TEMPLATE

READABLE_TYPES = {"messages": "list of `{role, content}`", "json": "JSON string"}  # as a card reader meets them

PROMPTS_DIR = Path(__file__).resolve().parents[1] / "prompts"
WINDOWS_PATH = re.compile(r"^[A-Za-z]:[\\/]")
LOCAL_PATH = re.compile(r"^(/|~|[A-Za-z]:[\\/])")
DEFAULT_LICENSE = "cc-by-nc-4.0"


@contextmanager
def quiet_datasets():
    """No ``datasets`` progress bars while writing a release (the state is restored after)."""
    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()


EVAL_CONFIG_PREFIX = "eval_"  # configs holding the evaluation prompt sets (not training data)


def config_name(category: str) -> str:
    """A category as a config name (lower case, letters, digits, ``-`` and ``_``)."""
    name = re.sub(r"[^a-z0-9_-]+", "-", (category or "").strip().lower()).strip("-")
    return name or "uncategorized"


def write_dataset_repo(
    run_dir: str | Path,
    repo_id: str,
    local_dir: str | Path,
    *,
    license: str = DEFAULT_LICENSE,
    prompts_dir: Path = PROMPTS_DIR,
) -> Path:
    """Write the complete dataset repo folder (data, card, funnel chart, templates, config); returns it."""
    run_dir = Path(run_dir)
    with quiet_datasets():
        data = load_preferences(run_dir)
    folder = fresh_release_dir(local_dir, repo_id)
    configs = _write_configs(data, folder)
    eval_configs = _write_eval_configs(read_json(run_dir / "eval" / "results.json"), folder)
    funnel = read_json(run_dir / "dataset" / "funnel.json")
    if not funnel_ran(funnel):
        funnel = None  # no stage processed raw texts (e.g. an import of released CSVs): a funnel of zeros says nothing
    elif (run_dir / "dataset" / "funnel.png").is_file():
        shutil.copy2(run_dir / "dataset" / "funnel.png", folder / "funnel.png")
    run_config = _read_yaml(run_dir / "config.yaml")
    if run_config is not None:
        run_config = public_config(run_config)
        (folder / "config.yaml").write_text(yaml.safe_dump(run_config, sort_keys=False), encoding="utf-8")
    templates = _copy_templates(prompts_dir, folder / "prompts")
    card = _dataset_card(
        data,
        repo_id,
        configs,
        license=license,
        funnel=funnel,
        run_config=run_config,
        templates=templates,
        has_chart=(folder / "funnel.png").is_file(),
        eval_configs=eval_configs,
    )
    card.save(folder / "README.md")
    return folder


def _write_configs(data: DatasetDict, folder: Path) -> list[dict[str, Any]]:
    """``data/<config>/<split>-00000-of-00001.parquet`` for ``default`` and each category; the YAML ``configs``."""
    categories = sorted({config_name(c) for split in data.values() for c in split["category"]})
    configs = []
    for name in ["default", *categories]:
        files = []
        for split, dataset in data.items():
            rows = [i for i, c in enumerate(dataset["category"]) if name in ("default", config_name(c))]
            if not rows:
                continue
            path = f"data/{name}/{split}-00000-of-00001.parquet"
            (folder / path).parent.mkdir(parents=True, exist_ok=True)
            with quiet_datasets():
                dataset.select(rows).to_parquet(str(folder / path))
            files.append({"split": split, "path": path, "rows": len(rows)})
        entry: dict[str, Any] = {
            "config_name": name,
            "data_files": [{"split": f["split"], "path": f["path"]} for f in files],
        }
        if name == "default":
            entry["default"] = True
        configs.append({"yaml": entry, "rows": {f["split"]: f["rows"] for f in files}})
    return configs


def _write_eval_configs(results: dict[str, Any] | None, folder: Path) -> list[dict[str, Any]]:
    """The run's local evaluation prompt sets as ``eval_<set>`` configs (split ``test``), so the model card's
    ``model-index`` can name them by this repo's id; sets loaded from the Hub already have one."""
    from datasets import Dataset

    from safer_instruct.evaluate.sets import PromptSetConfig, load_prompt_set

    configs = []
    for name, settings in ((results or {}).get("config") or {}).get("sets", {}).items():
        if settings.get("hub"):
            continue
        items = load_prompt_set(PromptSetConfig.model_validate(settings))
        path = f"data/{EVAL_CONFIG_PREFIX}{name}/test-00000-of-00001.parquet"
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        columns = {
            "prompt": [i.prompt for i in items],
            "category": [i.category for i in items],
            "reference": [i.reference or None for i in items],
        }
        with quiet_datasets():
            Dataset.from_dict(columns).to_parquet(str(folder / path))
        configs.append(
            {
                "yaml": {
                    "config_name": f"{EVAL_CONFIG_PREFIX}{name}",
                    "data_files": [{"split": "test", "path": path}],
                },
                "rows": {"test": len(items)},
                "kind": settings.get("kind"),
            }
        )
    return configs


def _dataset_card(
    data: DatasetDict,
    repo_id: str,
    configs: list[dict[str, Any]],
    *,
    license: str,
    funnel: Any,
    run_config: dict[str, Any] | None,
    templates: list[dict[str, str]],
    has_chart: bool,
    eval_configs: list[dict[str, Any]] = (),
) -> DatasetCard:
    """The card: every number and claim in it comes from the rows, the funnel and the run's config."""
    total = sum(len(split) for split in data.values())
    splits = list(data)
    categories = [c["yaml"]["config_name"] for c in configs if c["yaml"]["config_name"] != "default"]
    contents = human_list(content_warnings(categories))
    card_data = DatasetCardData(
        language=["en"],
        license=license,
        pretty_name=f"{repo_id.split('/')[-1]} (Safer-Instruct safety preferences)",
        size_categories=[_size_category(total)],
        task_categories=["text-generation"],
        tags=["safety", "alignment", "preference", "dpo", "safer-instruct", "not-for-all-audiences"],
        configs=[config["yaml"] for config in [*configs, *eval_configs]],
        **gating_metadata(contents),
    )
    kinds = Counter(kind for split in data.values() for kind in split["kind"])
    pairs = sum(bool(rejected) for split in data.values() for rejected in split["rejected"])
    imported = imported_files(data)
    eval_sets = ((run_config or {}).get("decontaminate") or {}).get("eval_sets") or []
    return DatasetCard.from_template(
        card_data,
        template_path=template_path("dataset_card.md.j2"),
        repo_id=repo_id,
        paper_url=PAPER_URL,
        citation=CITATION,
        total_rows=total,
        kinds=dict(kinds),
        pairs=pairs,
        sft_only=total - pairs,
        contents=contents,
        imported_rows=sum(imported.values()),
        imported_files=human_list([f"`{name}`: {count} rows" for name, count in sorted(imported.items())]),
        built_rows=total - sum(imported.values()),
        columns_table=markdown_table(
            ["column", "type", "what"], [[f"`{f.name}`", READABLE_TYPES.get(f.type, f.type), f.what] for f in ROW]
        ),
        config_table=markdown_table(
            ["config", *splits], [[c["yaml"]["config_name"], *(c["rows"].get(s, 0) for s in splits)] for c in configs]
        ),
        category_configs=categories,
        funnel_table=funnel_table(funnel) if funnel is not None else None,
        category_funnel=category_funnel_table(funnel),
        has_chart=has_chart,
        models_table=models_table(data, run_config if funnel is not None else None),
        templates=templates,
        reversed_template=REVERSE_TEMPLATE,
        reversed_template_sha=hashlib.sha256(REVERSE_TEMPLATE.encode("utf-8")).hexdigest()[:12],
        run_config=yaml.safe_dump(run_config, sort_keys=False) if run_config else None,
        decontamination=_settings(run_config, ("decontam",)),
        eval_sets=human_list([f"`{Path(str(path)).name}`" for path in eval_sets]),
        personal_data=_settings(run_config, ("pii", "personal", "scrub")),
        splits=splits,
        eval_table=markdown_table(
            ["config", "kind", "prompts"],
            [[c["yaml"]["config_name"], c["kind"], c["rows"]["test"]] for c in eval_configs],
        )
        if eval_configs
        else None,
    )


# what a category's name says it holds (words in the name), for the content warning; unknown names are listed as they are
WARNINGS = (
    (("hate", "insult", "harass", "toxic", "offens", "abus"), "hate speech and insults"),
    (("self-harm", "self_harm", "selfharm", "suicid"), "statements about self-harm"),
    (("danger",), "dangerous advice"),
    (("illegal", "crime", "criminal", "fraud", "theft"), "how-tos for illegal acts"),
    (("sexual", "nsfw", "adult", "explicit", "porn"), "sexual content"),
    (("violen", "weapon", "terror"), "violence"),
)
BENIGN_CATEGORIES = {"helpfulness"}


def content_warnings(categories: list[str]) -> list[str]:
    """What the content warning names: one phrase per kind of harmful text among ``categories``, none left out."""
    known: set[int] = set()
    unknown: list[str] = []
    for category in categories:
        name = category.lower()
        if name in BENIGN_CATEGORIES:
            continue
        hits = {i for i, (words, _) in enumerate(WARNINGS) if any(word in name for word in words)}
        known |= hits
        if not hits:
            unknown.append(f"text labelled `{category}`")
    return [WARNINGS[i][1] for i in sorted(known)] + unknown


def human_list(items: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return " and ".join([", ".join(items[:-1]), items[-1]]) if len(items) > 1 else "".join(items)


def funnel_ran(funnel: Any) -> bool:
    """Whether any stage before assembly processed items: an import of released rows has no funnel to show."""
    stages = funnel.get("stages") if isinstance(funnel, dict) else funnel
    if isinstance(stages, dict):
        return any(
            isinstance(entry, dict) and entry.get("in") for stage, entry in stages.items() if stage != "assemble"
        )
    return bool(stages)


def imported_files(data: DatasetDict) -> Counter:
    """Rows imported from released CSV files (provenance ``import``), per file name."""
    files: Counter = Counter()
    for split in data.values():
        for raw in split["provenance"] if "provenance" in split.column_names else []:
            try:
                provenance = json.loads(raw) if isinstance(raw, str) else raw
            except json.JSONDecodeError:
                continue
            entry = provenance.get("import") if isinstance(provenance, dict) else None
            if isinstance(entry, dict):
                files[Path(str(entry.get("file") or "?")).name] += 1
    return files


def public_config(node: Any) -> Any:
    """The run's config as public text: an absolute or home-relative local path keeps only its last part."""
    if isinstance(node, dict):
        return {key: public_config(value) for key, value in node.items()}
    if isinstance(node, list):
        return [public_config(value) for value in node]
    if isinstance(node, str) and LOCAL_PATH.match(node):
        return f"<local>/{PureWindowsPath(node).name if WINDOWS_PATH.match(node) else Path(node).name}"
    return node


def funnel_table(funnel: Any) -> str | None:
    """The pipeline's funnel report (``{"stages": {stage: {in, out, dropped, failed, usage, wall_s, ...}}}``) as
    Markdown; a list of stage rows (any columns) is rendered as it is."""
    stages = funnel.get("stages") if isinstance(funnel, dict) else funnel
    if isinstance(stages, dict) and stages:
        rows = []
        for stage, entry in stages.items():
            entry = entry if isinstance(entry, dict) else {"out": entry}
            usage = entry.get("usage") or {}
            tokens = sum(
                u.get("prompt_tokens", 0) + u.get("completion_tokens", 0)
                for u in usage.values()
                if isinstance(u, dict)
            )
            rows.append(
                [
                    stage,
                    entry.get("in"),
                    entry.get("out"),
                    _flat(entry.get("dropped")) or None,
                    entry.get("failed"),
                    tokens or None,
                    _flat(entry.get("wall_s")),
                ]
            )
        return markdown_table(["stage", "in", "out", "dropped (reason: n)", "failed", "tokens", "time (s)"], rows)
    if isinstance(stages, list) and stages and all(isinstance(row, dict) for row in stages):
        headers: list[str] = []
        for row in stages:
            headers += [key for key in row if key not in headers]
        return markdown_table(headers, [[_flat(row.get(key)) for key in headers] for row in stages])
    return None


def category_funnel_table(funnel: Any) -> str | None:
    """Items kept per stage and category (the pipeline's ``by_category`` counts), when the report has them."""
    stages = funnel.get("stages") if isinstance(funnel, dict) else None
    if not isinstance(stages, dict):
        return None
    by_stage = {stage: entry.get("by_category") for stage, entry in stages.items() if isinstance(entry, dict)}
    categories = sorted({c for counts in by_stage.values() if isinstance(counts, dict) for c in counts})
    if not categories:
        return None
    rows = [[stage, *((counts or {}).get(c, {}).get("out") for c in categories)] for stage, counts in by_stage.items()]
    return markdown_table(["stage", *categories], rows)


def models_table(data: DatasetDict, run_config: dict[str, Any] | None) -> str | None:
    """Which model and prompt template each stage used: from the rows' provenance, else from the run's config."""
    used: dict[str, set[tuple[str, str, str]]] = {}
    for split in data.values():
        if "provenance" not in split.column_names:
            break
        for raw in split["provenance"]:
            for stage, entry in _provenance_entries(raw):
                used.setdefault(stage, set()).add(
                    (
                        public_config(entry["model"]),
                        str(entry.get("template") or ""),
                        str(entry.get("template_sha") or ""),
                    )
                )
    if not used and run_config:
        for path, section in _walk(run_config):
            if isinstance(section.get("model"), str) and ("backend" in section or path.endswith("llm")):
                used.setdefault(path or "(top level)", set()).add(
                    (f"{section['model']} ({section.get('backend', 'local')})", "", "")
                )
    if not used:
        return None
    rows = [
        [stage, model, template, f"`{sha}`" if sha else None]
        for stage, entries in used.items()
        for model, template, sha in sorted(entries)
    ]
    return markdown_table(["stage", "model", "template", "template sha256"], rows)


def _provenance_entries(raw: Any) -> list[tuple[str, dict[str, Any]]]:
    """The ``(stage, entry)`` pairs of one row's provenance that name a model."""
    try:
        provenance = json.loads(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError:
        return []
    if not isinstance(provenance, dict):
        return []
    return [
        (stage, entry)
        for stage, entry in provenance.items()
        if isinstance(entry, dict) and isinstance(entry.get("model"), str) and entry["model"]
    ]


def _walk(node: dict[str, Any], path: str = ""):
    yield path, node
    for key, value in node.items():
        if isinstance(value, dict):
            yield from _walk(value, f"{path}.{key}" if path else str(key))


def _settings(run_config: dict[str, Any] | None, needles: tuple[str, ...]) -> str | None:
    """The run-config entries whose key mentions one of ``needles``, as YAML."""
    if not run_config:
        return None
    found = {}
    for path, section in _walk(run_config):
        for key, value in section.items():
            if any(needle in str(key).lower() for needle in needles):
                found[f"{path}.{key}" if path else str(key)] = value
    return yaml.safe_dump(found, sort_keys=False).strip() if found else None


def _copy_templates(prompts_dir: Path, target: Path) -> list[dict[str, str]]:
    """Copy the prompt templates into the repo; their names, hashes and text for the card."""
    if not prompts_dir.is_dir():
        return []
    templates = []
    for path in sorted(prompts_dir.rglob("*")):
        if not path.is_file() or path.suffix in (".py", ".pyc") or "__pycache__" in path.parts:
            continue
        relative = path.relative_to(prompts_dir)
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target / relative)
        text = path.read_text(encoding="utf-8", errors="replace")
        sha = load_template(str(path)).sha if path.suffix == ".j2" else sha256_short(path)
        templates.append({"name": relative.as_posix(), "sha256": sha, "text": text.strip()})
    return templates


def _read_yaml(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise SaferInstructError(f"{path}: not valid YAML: {err}") from err
    return data if isinstance(data, dict) else None


def _flat(value: Any) -> Any:
    if isinstance(value, dict):
        return ", ".join(f"{key}: {_flat(inner)}" for key, inner in value.items())
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ", ".join(str(_flat(item)) for item in value)
    return value


def _size_category(rows: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if rows < limit:
            return label
    return "n>1M"
