"""The text an exported Model Zoo bundle ships: ``docs/README.md`` and ``LICENSE``.

:mod:`medcoss_monai.bundle.export` assembles the configs and writes these files.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medcoss_monai.layout import LOSS_HISTORY_FILE

__all__ = ["bundle_license", "bundle_readme"]

_OUTPUTS = {
    "features": ("`features.csv` (one row per input: its file, then its pooled features; a slide tile's row is "
                 "`<file>:level<l>:y<y>:x<x>`, a report's its `id`, else its text file)"),
    "classification": ("`predictions.csv`: one row per input, its file (a report: its `id`, else its text file) then "
                       "one probability per class, in the order of the metadata's `channel_def` (MONAI "
                       "`ClassificationSaver`)"),
    "segmentation": ("one label map per input, `<input name>_seg<ext>` (NIfTI for volumes, PNG for 2D images), on the "
                     "input's grid: same shape and affine, the preprocessing being inverted with MONAI `Invertd` "
                     "before `SaveImaged`"),
}


def _recipe(modality: str, info: Mapping[str, Any]) -> str:
    """One paragraph on how the exported weights were trained."""
    if info.get("task"):
        start = f"from `{info['pretrained_ckpt']}`" if info.get("pretrained_ckpt") else "from scratch"
        return (f"Supervised fine-tuning of a MedCoSS encoder {start} on task '{info['task']}' with "
                f"`{Path(str(info.get('bundle_file', ''))).name}` ({info.get('epochs', '?')} epoch(s)).")
    return (f"MedCoSS continual self-supervised pre-training (masked image / language modelling, k-means rehearsal "
            f"buffer, feature distillation, intra-modal mixup); stage '{modality}', {info.get('epochs', '?')} epoch(s), "
            f"previous stage '{info.get('previous_stage', '') or 'none'}'.")


def _results(info: Mapping[str, Any], metadata: Mapping[str, Any]) -> str:
    """Test metrics of a task, or the loss history of a stage."""
    if info.get("task"):
        metrics = metadata.get("eval_metrics") or {}
        sizes = info.get("split_sizes") or {}
        rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in metrics.items())
        split = f" ({sizes.get('test', '?')} test items, {sizes.get('training', '?')} training items)" if sizes else ""
        return (f"Test split of the task{split}, from its `metrics.json` (also `eval_metrics` in the metadata):\n\n"
                f"| metric | value |\n| --- | --- |\n{rows}\n" if rows else "No test metrics were recorded.\n")
    history = Path(str(info.get("config_file", "."))).parent / LOSS_HISTORY_FILE
    if not history.is_file():
        return "Loss per epoch: not recorded here.\n"
    return "Loss per epoch of the exported stage:\n\n```\n" + history.read_text().strip() + "\n```\n"


def _checks(kind: str, metadata: Mapping[str, Any]) -> str:
    """How the bundle is verified: MONAI's checks for image networks, the project's own for text."""
    common = (
        "- metadata: `python -m monai.bundle verify_metadata --meta_file configs/metadata.json "
        "--filepath <medcoss_monai>/bundle/schema/metadata_schema.json`\n"
        "- TorchScript, by scripting as the Model Zoo does: `python -m monai.bundle ckpt_export network_def "
        "--filepath models/model.ts --ckpt_file models/model.pt --meta_file configs/metadata.json "
        "--config_file configs/inference.json`\n"
    )
    if kind == "text":
        return common + (
            "- `verify_net_in_out` feeds random float images and cannot feed token ids, so it does not apply. The "
            "project checks this bundle instead (`tests/test_export_text.py`): the network built from "
            "`network_def` and the scripted `models/model.ts` give the same output as the trained network on real "
            "reports tokenized with `models/tokenizer`, of shape (B, "
            f"{metadata['network_data_format']['outputs']['pred']['num_channels']}); and `configs/inference.json` run "
            "on a `.txt` report and on a datalist of texts writes one finite row per report.\n"
        )
    return common + (
        "- input and output shapes: `python -m monai.bundle verify_net_in_out network_def "
        "--meta_file configs/metadata.json --config_file configs/inference.json`\n"
    )


def bundle_readme(
    name: str, card: Mapping[str, Any], info: Mapping[str, Any], metadata: Mapping[str, Any], output: str = "features"
) -> str:
    """The bundle's ``docs/README.md``: intended use, data, recipe, results, commands, checks and limitations.

    Args:
        name: the bundle name.
        card: the modality's card (:func:`medcoss_monai.layout.modality_card`): its name, input kind and
            ``inputs``, what a user may pass to the exported inference.
        info: what is known of the trained folder (``config_file``, ``epochs``, ``task``, ``metrics``...).
        metadata: the bundle's ``metadata.json`` content (inputs and outputs are read from it).
        output: ``"features"``, ``"classification"`` or ``"segmentation"``.

    Returns:
        The Markdown text.
    """
    fmt = metadata["network_data_format"]
    inp = fmt["inputs"].get("image") or fmt["inputs"]["input_ids"]
    pred = fmt["outputs"]["pred"]
    shape = ", ".join(map(str, inp["spatial_shape"]))
    if "image" in fmt["inputs"]:
        net_in = f"a preprocessed image batch (B, {inp['num_channels']}, {shape})"
    else:
        net_in = f"token ids (B, {shape}) and their attention mask, from `models/tokenizer`"
    classes = ", ".join(f"{k}: {v}" for k, v in pred["channel_def"].items())
    net_out = {"features": f"({pred['num_channels']},) pooled features per input",
               "classification": f"{pred['num_channels']} logits per input ({classes})",
               "segmentation": f"{pred['num_channels']} logit channels per voxel ({classes})"}[output]
    sliding = " by sliding windows of that size" if output == "segmentation" and inp.get("is_patch_data") else ""
    return f"""# {name}

## Intended use
{metadata['intended_use']}
{metadata['description']}

`network_def` maps {net_in}{sliding} to {net_out}.

## Data
{metadata['data_source']}. The sample data is tiny: it proves the pipeline, it is not a benchmark.

## Training recipe
{_recipe(card["modality"], info)} `configs/train.json` continues training from the exported weights
(`python -m monai.bundle run --config_file configs/train.json --train#trainer#max_epochs 5`).

## Results
{_results(info, metadata)}
## Inference on your files
Run from this folder:

```bash
python -m monai.bundle run --config_file configs/inference.json --dataset_dir <input> --output_dir <out>
```

`<input>` is {card.get("inputs", "a file, a folder of files or a datalist JSON")} (`--data_section`
names the datalist list to read, default `test`). Without `--dataset_dir` the held-out split of the
medcoss-monai sample data is read. It writes into `<out>` (default `eval/`) {_OUTPUTS[output]}.

## Checks
{_checks(card["input_kind"], metadata)}
## Limitations
Trained briefly on a handful of public sample files; not validated for any clinical task. Inputs are
preprocessed as in `configs/inference.json`. Research use only.
"""


def bundle_license(repo_license: Path | None) -> str:
    """The bundle's ``LICENSE``: the terms of the weights, followed by the repository's license when given.

    Args:
        repo_license: the repository's ``LICENSE`` file (skipped when None or missing).

    Returns:
        The license text.
    """
    text = (
        "The exported code and configuration follow the license of medcoss-monai.\n"
        "The weights were trained on public sample data whose licenses apply to derived models; some of it is\n"
        "non-commercial / no-derivatives (see docs/README.md). Research use only.\n"
    )
    if repo_license is not None and repo_license.is_file():
        text += "\n" + repo_license.read_text()
    return text
