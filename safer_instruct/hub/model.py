"""The model release: merged weights (adapter in ``adapter/``), a card with the recipe, the curves, the eval chart
and a model-index.

A LoRA checkpoint is released as the base model with the adapter merged in, at the top level, so that
``AutoModelForCausalLM.from_pretrained(repo)`` and ``pipeline("text-generation", model=repo)`` load it in one
call; the adapter itself goes to ``adapter/`` (its ``base_model_name_or_path`` is the base's Hub id).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from safer_instruct.errors import SaferInstructError
from safer_instruct.hub.cards import CITATION, PAPER_URL, markdown_table, percent, read_json, template_path
from safer_instruct.hub.dataset import EVAL_CONFIG_PREFIX
from safer_instruct.hub.release_dir import find_run_dir, fresh_release_dir
from safer_instruct.models import DEFAULT_MODEL_ALIASES, DEFAULT_MODEL_HUB_ID, MARKER

SKIPPED = {"README.md", "training_args.bin", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"}
TOKENIZER_FILE = "tokenizer_config.json"
ADAPTER_SUBFOLDER = "adapter"
REPORT_FILES = ("metrics.json", "curves.png")
EVAL_CHART = "eval_chart.png"  # <run>/eval/chart.png, as released
LORA_KEYS = ("peft_type", "r", "lora_alpha", "lora_dropout", "target_modules", "use_rslora", "task_type")
RUN_KEYS = {
    "method": "method",
    "model": "started from",
    "start_adapter": "start adapter",
    "dataset": "training data",
    "train_rows": "training rows",
    "load_in_4bit": "4-bit base (QLoRA)",
    "loss_type": "DPO loss",
    "beta": "DPO beta",
    "reference": "DPO reference",
}
SET_TITLES = {"unsafe": "unsafe prompts", "benign_risky": "benign prompts that look risky", "benign": "benign prompts"}
LOCAL_EVAL_TYPE = "safer-instruct-eval"  # model-index type of a prompt set that has no Hub dataset
EXAMPLE_PROMPT = "My neighbour keeps parking in my spot. How can I get back at him?"


def write_model_repo(
    checkpoint: str | Path,
    repo_id: str,
    local_dir: str | Path,
    *,
    dataset_id: str | None = None,
    eval_results: str | Path | None = None,
    eval_model: str = "aligned",
    base_model: str | None = None,
    recipe: str | Path | None = None,
    license: str = "apache-2.0",
    merge: bool = True,
    eval_dataset_id: str | None = None,
) -> Path:
    """Write the model repo folder from a training output (adapter, ``merged/``, metrics.json, curves.png).

    An adapter is merged into its base (the local model it was trained on) unless the checkpoint has
    ``merged/`` already or ``merge`` is off. ``eval_results`` defaults to ``<run>/eval/results.json`` when the
    checkpoint lies in a run directory (its ``chart.png`` goes into the card); without results the card says
    so and carries no model-index. The model-index names each prompt set by the Hub dataset it was loaded
    from, else by ``eval_dataset_id``.
    """
    checkpoint = Path(checkpoint)
    is_adapter = (checkpoint / "adapter_config.json").is_file()
    merged = checkpoint / "merged" if (checkpoint / "merged" / "config.json").is_file() else None
    if not is_adapter and not (checkpoint / "config.json").is_file():
        raise SaferInstructError(f"{checkpoint}: not a model folder (no adapter_config.json or config.json)")
    metrics = read_json(checkpoint / "metrics.json") or {}
    adapter_config = read_json(checkpoint / "adapter_config.json") or {}
    declared = adapter_config.get("base_model_name_or_path") or metrics.get("base_model")
    if not is_adapter and declared is None:
        declared = str(checkpoint)
    base_id, dequantized = hub_base_model(declared, base_model)
    results_path = Path(eval_results) if eval_results else _run_file(checkpoint, "eval/results.json")
    results = read_json(results_path) if results_path else None
    if eval_results and results is None:
        raise SaferInstructError(f"{eval_results}: evaluation results not found")
    recipe_settings = _read_recipe(recipe)

    folder = fresh_release_dir(local_dir, repo_id)
    if is_adapter:
        adapter_dir = _copy_layout(checkpoint, merged, folder, merge)
        _point_adapter_at(adapter_dir / "adapter_config.json", base_id)
    else:
        _copy_weights(checkpoint, folder)
    chart = results_path.parent / "chart.png" if results_path else None
    if results and chart and chart.is_file():
        shutil.copy2(chart, folder / EVAL_CHART)
    card = _model_card(
        repo_id,
        base_id,
        folder,
        is_adapter=is_adapter,
        has_merged=(folder / "config.json").is_file() and is_adapter,
        dataset_id=dataset_id,
        results=results,
        eval_model=eval_model,
        metrics=metrics,
        adapter_config=adapter_config,
        recipe=recipe_settings,
        license=license,
        dequantized=dequantized,
        eval_dataset_id=eval_dataset_id,
    )
    card.save(folder / "README.md")
    return folder


def hub_base_model(declared: str | None, override: str | None = None) -> tuple[str, bool]:
    """The base model's Hub id, and whether the local copy it was trained on was dequantized from GGUF."""
    if override:
        return override, False
    if not declared:
        raise SaferInstructError("the checkpoint names no base model; give its Hub id with --base-model")
    if declared in DEFAULT_MODEL_ALIASES:
        return DEFAULT_MODEL_HUB_ID, True
    path = Path(declared).expanduser()
    if path.exists():
        marker = path / MARKER
        if marker.is_file():
            return json.loads(marker.read_text(encoding="utf-8"))["upstream"], True
        raise SaferInstructError(f"the base model is the local folder {path}; give its Hub id with --base-model")
    return declared, False


def eval_set_ids(results: dict[str, Any], eval_dataset_id: str | None = None) -> dict[str, str]:
    """Each prompt set's Hub dataset id: the one it was loaded from (``hub:``), else ``eval_dataset_id``.

    A set read from a local file without ``eval_dataset_id`` keeps the kit's name for it (no Hub page).
    """
    configured = (results.get("config") or {}).get("sets") or {}
    ids = {}
    for name in results.get("sets") or configured:
        hub = (configured.get(name) or {}).get("hub")
        ids[name] = hub or eval_dataset_id or LOCAL_EVAL_TYPE
    return ids


def eval_config(set_name: str, dataset_id: str | None, eval_dataset_id: str | None) -> str:
    """The config a prompt set has in its dataset: ``eval_<set>`` in the kit's dataset release, else the set's name."""
    return f"{EVAL_CONFIG_PREFIX}{set_name}" if eval_dataset_id and dataset_id == eval_dataset_id else set_name


def eval_results_for(results: dict[str, Any], model: str, eval_dataset_id: str | None = None) -> list[EvalResult]:
    """``model``'s numbers in ``safer-instruct eval``'s results.json as model-index entries (rates as fractions)."""
    scores = results.get("models", {}).get(model)
    if not scores:
        return []
    set_ids = eval_set_ids(results, eval_dataset_id)
    entries = []
    for set_name, entry in scores.items():
        for metric, key in (("harmless rate", "harmless"), ("refusal rate", "refusal")):
            value = (entry.get(key) or {}).get("rate")
            if value is None:
                continue
            entries.append(
                EvalResult(
                    task_type="text-generation",
                    task_name="Safety and over-refusal",
                    dataset_type=set_ids.get(set_name, LOCAL_EVAL_TYPE),
                    dataset_name=f"safer-instruct {SET_TITLES.get(set_name, set_name)}",
                    dataset_config=eval_config(set_name, set_ids.get(set_name), eval_dataset_id),
                    dataset_split="test",
                    metric_type=f"{key}_rate",
                    metric_name=metric,
                    metric_value=round(value, 4),
                    metric_config=results.get("harmless_by") if key == "harmless" else "refusal detector",
                )
            )
    helpfulness = results.get("helpfulness") or {}
    win = (helpfulness.get("win_rate") or {}).get("rate")
    if helpfulness.get("model") == model and win is not None:
        entries.append(
            EvalResult(
                task_type="text-generation",
                task_name="Helpfulness (pairwise, judged)",
                dataset_type=set_ids.get(helpfulness.get("set"), LOCAL_EVAL_TYPE),
                dataset_name=f"safer-instruct {SET_TITLES.get(helpfulness.get('set'), helpfulness.get('set'))}",
                dataset_config=eval_config(
                    helpfulness.get("set"), set_ids.get(helpfulness.get("set")), eval_dataset_id
                ),
                dataset_split="test",
                metric_type="win_rate",
                metric_name=f"win rate against {helpfulness.get('baseline')}",
                metric_value=round(win, 4),
            )
        )
    return entries


def _model_card(
    repo_id: str,
    base_id: str,
    folder: Path,
    *,
    is_adapter: bool,
    has_merged: bool,
    dataset_id: str | None,
    results: dict[str, Any] | None,
    eval_model: str,
    metrics: dict[str, Any],
    adapter_config: dict[str, Any],
    recipe: dict[str, Any] | None,
    license: str,
    dequantized: bool,
    eval_dataset_id: str | None,
) -> ModelCard:
    eval_entries = eval_results_for(results, eval_model, eval_dataset_id) if results else []
    card_data = ModelCardData(
        base_model=base_id,
        datasets=[dataset_id] if dataset_id else None,
        eval_results=eval_entries or None,
        model_name=repo_id.split("/")[-1],
        library_name="peft" if is_adapter and not has_merged else "transformers",
        pipeline_tag="text-generation",
        license=license,
        language=["en"],
        tags=[
            "safety",
            "alignment",
            "safer-instruct",
            "trl",
            *([metrics["method"]] if metrics.get("method") else []),
            *(["lora"] if is_adapter else []),
        ],
    )
    adapter_dir = folder / ADAPTER_SUBFOLDER if has_merged else folder
    has_tokenizer = (adapter_dir / TOKENIZER_FILE).is_file()
    return ModelCard.from_template(
        card_data,
        template_path=template_path("model_card.md.j2"),
        repo_id=repo_id,
        title=repo_id.split("/")[-1],
        base_id=base_id,
        dataset_id=dataset_id,
        paper_url=PAPER_URL,
        citation=CITATION,
        is_adapter=is_adapter,
        has_merged=has_merged,
        adapter_subfolder=ADAPTER_SUBFOLDER,
        tokenizer_source=repo_id if has_tokenizer else base_id,
        example_prompt=EXAMPLE_PROMPT,
        method=metrics.get("method"),
        hyperparameters=_hyperparameters(metrics, adapter_config, recipe),
        training_results=_training_results(metrics),
        has_curves=(folder / "curves.png").is_file(),
        eval_table=_eval_table(results) if results else None,
        has_eval_chart=(folder / EVAL_CHART).is_file(),
        eval_chart=EVAL_CHART,
        eval_sets=_eval_sets(results, eval_dataset_id) if results else None,
        eval_model=eval_model if eval_entries else None,
        harmless_by=(results or {}).get("harmless_by"),
        helpfulness=(results or {}).get("helpfulness"),
        dequantized=dequantized,
    )


def _hyperparameters(
    metrics: dict[str, Any], adapter_config: dict[str, Any], recipe: dict[str, Any] | None
) -> str | None:
    rows = [(label, metrics[key]) for key, label in RUN_KEYS.items() if metrics.get(key) not in (None, "")]
    rows += [(f"lora {key}", adapter_config[key]) for key in LORA_KEYS if adapter_config.get(key) not in (None, "")]
    if recipe:
        rows += [(f"recipe {key}", value) for key, value in recipe.items() if not isinstance(value, dict)]
    return markdown_table(["setting", "value"], [(key, _plain(value)) for key, value in rows]) if rows else None


def _training_results(metrics: dict[str, Any]) -> str | None:
    first, final, summary = metrics.get("first") or {}, metrics.get("final") or {}, metrics.get("summary") or {}
    rows = [(key, _plain(first.get(key)), _plain(value)) for key, value in final.items()]
    for key in ("train_runtime", "train_loss"):
        if key in summary:
            rows.append((key, "", _plain(summary[key])))
    return markdown_table(["metric", "first logged step", "last logged step / run"], rows) if rows else None


def _eval_sets(results: dict[str, Any], eval_dataset_id: str | None) -> str | None:
    """Where each prompt set comes from: its Hub dataset (linked) or the kit's file."""
    configured = (results.get("config") or {}).get("sets") or {}
    sets = results.get("sets") or {}
    rows = []
    for name, dataset in eval_set_ids(results, eval_dataset_id).items():
        path = (configured.get(name) or {}).get("path")
        kind = (sets.get(name) or {}).get("kind") or name
        if dataset != LOCAL_EVAL_TYPE:
            config = eval_config(name, dataset, eval_dataset_id)
            where = f"[`{dataset}`](https://huggingface.co/datasets/{dataset})" + (
                f", config `{config}`" if config != name else ""
            )
        else:
            where = f"`{path}`" if path else f"shipped with the kit: `safer_instruct/evaluate/data/{kind}.jsonl`"
        rows.append((SET_TITLES.get(name, name), (sets.get(name) or {}).get("n"), where))
    return markdown_table(["prompt set", "n", "dataset"], rows) if rows else None


def _eval_table(results: dict[str, Any]) -> str | None:
    rows = []
    for model, sets in (results.get("models") or {}).items():
        for set_name, entry in sets.items():
            rows.append(
                (
                    model,
                    SET_TITLES.get(set_name, set_name),
                    entry.get("n"),
                    percent(entry.get("harmless")),
                    percent(entry.get("refusal")),
                )
            )
    if not rows:
        return None
    return markdown_table(["model", "prompt set", "n", "harmless", "refused"], rows)


def _copy_layout(checkpoint: Path, merged: Path | None, folder: Path, merge: bool) -> Path:
    """Merged weights at the root and the adapter in ``adapter/``; without merging, the adapter at the root.

    The merged weights are the checkpoint's ``merged/``, else merged here. (Transformers follows a root
    ``adapter_config.json`` even when asked for a subfolder, so the merged weights cannot sit in a
    subfolder next to a root adapter.) Returns the adapter folder.
    """
    if merged is None and not merge:
        _copy_weights(checkpoint, folder)
        return folder
    if merged is None:
        merge_adapter(checkpoint, folder)
    else:
        _copy_weights(merged, folder)
    _copy_weights(checkpoint, folder / ADAPTER_SUBFOLDER)
    for name in REPORT_FILES:
        if (checkpoint / name).is_file():
            shutil.copy2(checkpoint / name, folder / name)
    return folder / ADAPTER_SUBFOLDER


def merge_adapter(adapter_dir: Path, target: Path) -> Path:
    """The adapter's base (the local model it was trained on) with the adapter merged in, saved with the tokenizer."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from safer_instruct.training.modeling import locate

    source = locate(str(adapter_dir))
    try:
        base = AutoModelForCausalLM.from_pretrained(source.base, dtype="auto")
        model = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    except (OSError, ValueError) as err:
        raise SaferInstructError(
            f"{adapter_dir}: cannot merge the adapter into its base {source.base}: {err}"
        ) from err
    model.save_pretrained(target)
    tokenizer_source = adapter_dir if (adapter_dir / TOKENIZER_FILE).is_file() else source.base
    AutoTokenizer.from_pretrained(str(tokenizer_source)).save_pretrained(target)
    return target


def _copy_weights(source: Path, target: Path) -> None:
    """The loadable files of a training output: no checkpoints, optimizer state, pickled args or old card."""
    target.mkdir(parents=True, exist_ok=True)
    for path in source.iterdir():
        if path.is_file() and path.name not in SKIPPED:
            shutil.copy2(path, target / path.name)


def _point_adapter_at(config_path: Path, base_id: str) -> None:
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = base_id
    config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def _run_file(checkpoint: Path, relative: str) -> Path | None:
    run_dir = find_run_dir(checkpoint)
    path = run_dir / relative if run_dir else None
    return path if path and path.is_file() else None


def _read_recipe(recipe: str | Path | None) -> dict[str, Any] | None:
    if recipe is None:
        return None
    path = Path(recipe)
    if not path.is_file():
        raise SaferInstructError(f"{path}: recipe not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise SaferInstructError(f"{path}: the recipe is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise SaferInstructError(f"{path}: a recipe is a YAML mapping")
    return data


def _plain(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple, set)):
        return ", ".join(str(item) for item in sorted(value, key=str))
    return str(value)
