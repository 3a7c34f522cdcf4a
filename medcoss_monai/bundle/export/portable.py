"""Configs of an exported bundle that run with MONAI and PyTorch only (no ``medcoss_monai``), as the Model Zoo needs.

- ``configs/inference.json`` (:func:`portable_inference`, or :func:`make_portable` of a trained bundle's
  config): ``network_def`` loads the TorchScript ``models/model.ts``; inputs are read with
  ``monai.data.load_decathlon_datalist`` or ``glob``; outputs are written by MONAI's ``ClassificationSaver``
  (CSV rows) or ``SaveImaged`` (label maps on the input grid). Radiographs (DICOM, PNG, JPEG) are loaded
  by MONAI readers and config expressions (:data:`XRAY_IDS`), reports tokenized by the HF tokenizer the
  bundle ships (:data:`TEXT_IDS`).
- ``configs/evaluate.json``: :mod:`.evaluate_config` (the same chain on a labelled datalist).
- ``configs/multi_gpu_train.json`` (:func:`ddp_overlay`): the Zoo's DDP overlay of ``train.json``.
- :func:`save_torchscript`: ``models/model.ts`` scripted (or traced at the bundle's input size), with
  the metadata and inference config inside, as MONAI's ``ckpt_export`` writes it.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from medcoss_monai.bundle.export.zoo_configs import (
    ZOO_TOKENIZER,
    ZOO_TORCHSCRIPT,
    add_segmentation_output,
    evaluation_skeleton,
)

__all__ = [
    "GRAY_XRAY",
    "ITEM_NAMES",
    "PORTABLE_IMPORTS",
    "SLIDE_IDS",
    "TEXT_IDS",
    "TEXT_ITEM_NAMES",
    "TORCHSCRIPT_DEF",
    "XRAY_IDS",
    "csv_saver",
    "ddp_overlay",
    "make_portable",
    "make_portable_transforms",
    "needs_medcoss",
    "portable_inference",
    "save_torchscript",
    "with_xray_ids",
    "xray_loading",
]

PORTABLE_IMPORTS = ["$import glob", "$import os", "$import numpy", "$import torch", "$import monai"]
"""The only modules an exported inference or evaluation config imports."""
TORCHSCRIPT_DEF = f"$torch.jit.load(os.path.join(@bundle_root, '{ZOO_TORCHSCRIPT}'), map_location='cpu')"
"""``network_def`` of an exported config: the bundle's TorchScript."""
GRAY_XRAY = ("$lambda x: (((x[:3].float() * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)).sum(0, keepdim=True) "
             "if x.shape[0] >= 3 else x[:1].float()) / (255.0 if x.dtype == torch.uint8 else 65535.0 "
             "if x.dtype in (torch.int32, torch.uint16) else 1.0)).clamp(0.0, 1.0)")
"""A PNG/JPEG radiograph as one gray channel in [0, 1]: luma of colour, integer range of the file (as ``LoadXRay``)."""
_HEX = "0123456789ABCDEFabcdef"
XRAY_IDS = {
    # first value of a DICOM tag in PydicomReader's JSON-style metadata ({"vr": ..., "Value": [...]})
    "xray_tag": "$lambda meta, tag, default: ((meta.get(tag) or {}).get('Value') or [default])[0]",
    # the stored value range of BitsStored bits (PixelRepresentation 1: two's complement)
    "xray_stored_range": "$lambda bits, signed: (-2 ** (bits - 1), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)",
    # PydicomReader applies RescaleSlope/Intercept: the stored range is mapped the same way
    "xray_dicom_range": ("$lambda m: sorted(v * float(@xray_tag(m, '00281053', 1.0)) + float(@xray_tag(m, '00281052', 0.0)) "
                         "for v in @xray_stored_range(int(@xray_tag(m, '00280101', @xray_tag(m, '00280100', 16))), "
                         "int(@xray_tag(m, '00280103', 0)) == 1))"),
    # an expression cannot raise: a generator's throw() does, so a colour film stops as LoadXRay stops it
    "xray_refuse": "$lambda message: (_ for _ in ()).throw(ValueError(message))",
    "xray_photometric": "$lambda meta: str(@xray_tag(meta, '00280004', 'MONOCHROME2')).upper()",
    # the film's full stored range to [0, 1] (its exposure kept), MONOCHROME1 inverted so bone is bright
    "xray_gray_dicom": ("$lambda x: @xray_refuse('X-ray ' + str(x.meta.get('filename_or_obj', '')) + ' has PhotometricInterpretation ' "
                        "+ @xray_photometric(x.meta) + '; a grayscale film is expected.') "
                        "if not @xray_photometric(x.meta).startswith('MONOCHROME') else "
                        "(lambda y: 1.0 - y if @xray_photometric(x.meta) == 'MONOCHROME1' "
                        "else y)((lambda r: (x.float() - r[0]) / (r[1] - r[0]))(@xray_dicom_range(x.meta)))"),
    # the DICOM header leaves the metadata (large, may carry patient data, differs between files)
    "xray_drop_tags": (f"$lambda x: (lambda tags: (x, [x.meta.pop(k) for k in tags])[0])([k for k in x.meta "
                       f"if isinstance(k, str) and len(k) == 8 and all(c in '{_HEX}' for c in k)])"),
    "xray_gray_image": GRAY_XRAY,
    "xray_gray": ("$lambda x: (@xray_drop_tags(@xray_gray_dicom(x)) if '00280004' in x.meta or '00280100' in x.meta "
                  "else @xray_gray_image(x)).clamp(0.0, 1.0)"),
}
"""Config ids of the MONAI-only X-ray loading (:func:`xray_loading`): a DICOM film or a PNG/JPEG as ``LoadXRay`` gives it."""
ITEM_NAMES = "$lambda batch: [item['image'].meta for item in batch]"
_SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif")
SLIDE_IDS = {
    "openslide": "$monai.utils.optional_import('openslide')[0]",
    "slide_reader": "$monai.data.WSIReader(backend='openslide')",
    "tile_reader": "$monai.data.PILReader(reverse_indexing=False)",
    # a whole-slide file (a TIFF only when OpenSlide recognises it: plain TIFF tiles are read whole)
    "is_slide": (f"$lambda p: p.lower().endswith({_SLIDE_SUFFIXES}) and (not p.lower().endswith(('.tif', '.tiff')) "
                 "or @openslide.OpenSlide.detect_format(p) is not None)"),
    # (C, H, W) integers -> (3, H, W) float32 in [0, 1]: alpha dropped, gray repeated
    "tile_rgb": ("$lambda t, scale: (lambda c: (c.repeat(3, 1, 1) if c.shape[0] == 1 else c).float() / scale)"
                 "(t[:-1] if t.shape[0] in (2, 4) else t).clamp(0.0, 1.0)"),
    # the item's region of a slide: level-0 (y, x) location, (H, W) size at its level; the slide closed after
    "slide_region": ("$lambda d, size, level: (lambda wsi: (@tile_rgb(torch.as_tensor(numpy.array(@slide_reader.get_data("
                     "wsi, location=tuple(int(v) for v in d['location']), size=tuple(int(v) for v in d.get('size') or size), "
                     "level=int(d['level'] if d.get('level') is not None else level))[0])), 255.0), wsi.close())[0])"
                     "(@slide_reader.read(d['image']))"),
    # a plain image (PNG, JPEG, TIFF tile): whole, or its region at the item's location (a one-level slide)
    "image_region": ("$lambda d, size: (lambda a, meta: (lambda t: t if d.get('location') is None else "
                     "t[:, int(d['location'][0]):int(d['location'][0]) + int((d.get('size') or size)[0]), "
                     "int(d['location'][1]):int(d['location'][1]) + int((d.get('size') or size)[1])].clone())"
                     "(@tile_rgb(torch.as_tensor(a[None] if a.ndim == 2 else numpy.moveaxis(a, -1, 0)), "
                     "65535.0 if str(meta.get('mode', '')).startswith('I') else 255.0)))"
                     "(*(lambda r: (numpy.array(r[0]), r[1]))(@tile_reader.get_data(@tile_reader.read(d['image']))))"),
    # the tile as a MetaTensor named by its file and, for a region, its level and location (one CSV row per tile)
    "named_tile": ("$lambda d, size, level: monai.data.MetaTensor(@slide_region(d, size, level) if @is_slide(d['image']) "
                   "else @image_region(d, size), meta={'filename_or_obj': d['image'] if d.get('location') is None else "
                   "'{}:level{}:y{}:x{}'.format(d['image'], int(d['level'] if d.get('level') is not None else level), "
                   "int(d['location'][0]), int(d['location'][1]))})"),
}
"""Config ids of the MONAI-only tile loading (WSIReader with OpenSlide, PILReader): the tile ``LoadSlideTiled`` gives."""
TEXT_IDS = {
    # a report item's text (its "text", else its "text_file" read as UTF-8), whitespace collapsed (as ReportTextd)
    "report_text": ("$lambda d: dict(d, text=re.sub(r'\\s+', ' ', d['text'] if isinstance(d.get('text'), str) "
                    "else pathlib.Path(d['text_file']).read_text(encoding='utf-8')).strip())"),
    # token ids and mask of fixed length, as TokenizeTextd gives them, from the tokenizer the bundle ships
    "tokenize": ("$lambda d, length: dict(d, **{k: torch.as_tensor(v, dtype=torch.long) for k, v in @tokenizer(d['text'], "
                 "max_length=length, padding='max_length', truncation=True, return_attention_mask=True).items() "
                 "if k in ('input_ids', 'attention_mask')})"),
    "tokenizer": f"$transformers.AutoTokenizer.from_pretrained(os.path.join(@bundle_root, '{ZOO_TOKENIZER}'))",
    # (ids, label or None, (), {"attention_mask": ...}): the network's input and keyword argument
    "prepare_batch": ("$lambda batchdata, device=None, non_blocking=False, **kwargs: (batchdata['input_ids'].to(device), "
                      "batchdata['label'].to(device) if 'label' in batchdata else None, (), "
                      "{'attention_mask': batchdata['attention_mask'].to(device)})"),
}
"""Config ids of the MONAI-only text input: ``ReportTextd`` and ``TokenizeTextd`` as ``Lambda`` transforms."""
TEXT_IMPORTS = ["$import json", "$import pathlib", "$import re", "$import transformers"]
_TEXT_KEEP = ["id", "text_file", "text"]  # kept through SelectItemsd: they name the CSV rows
TEXT_ITEM_NAMES = ("$lambda batch: [{'filename_or_obj': str(d.get('id') or d.get('text_file') or "
               "' '.join(str(d.get('text', '')).split()[:8]))} for d in batch]")
_TEXT_ITEMS = ("$[dict(i, **{k: os.path.join(os.path.dirname(@dataset_dir), i[k]) for k in ('text_file',) "
               "if isinstance(i.get(k), str) and not os.path.isabs(i[k])}) "
               "for i in json.load(open(@dataset_dir, encoding='utf-8'))[@data_section]] if @dataset_dir.endswith('.json') "
               "else [{'text_file': p, 'id': os.path.basename(p)} for p in (sorted(glob.glob(os.path.join(@dataset_dir, '*.txt'))) "
               "if os.path.isdir(@dataset_dir) else [@dataset_dir])]")
_ITEMS = ("$monai.data.load_decathlon_datalist(@dataset_dir, True, @data_section) if @dataset_dir.endswith('.json') "
          "else [{'image': p} for p in (sorted(f for f in glob.glob(os.path.join(@dataset_dir, '*')) if os.path.isfile(f)) "
          "if os.path.isdir(@dataset_dir) else [@dataset_dir])]")


def portable_inference(
    transforms: list[Any],
    output: str,
    dataset_dir: str = "",
    inferer: Mapping[str, Any] | None = None,
    items: str = "@datalist",
    class_names: Sequence[str] = (),
    output_ext: str = ".nii.gz",
    mask_values: Sequence[int] | None = None,
    activation: str = "softmax",
) -> dict[str, Any]:
    """``configs/inference.json`` that needs MONAI and PyTorch only.

    Args:
        transforms: MONAI transform configs (raw, by ``_target_``) from a datalist item to the network input.
        output: ``"features"`` (``features.csv``), ``"classification"`` (``predictions.csv``),
            ``"detection"`` (``detections.csv``) or ``"segmentation"`` (label maps).
        dataset_dir: default input: a file, a folder of files or a decathlon datalist JSON.
        inferer: the inferer config (default ``SimpleInferer``).
        items: expression of the items the dataset reads (default the datalist as read).
        class_names: names of the output channels.
        output_ext: label map extension (segmentation).
        mask_values: label values written per class (segmentation).
        activation: ``"softmax"`` or ``"sigmoid"`` of classification logits.

    Returns:
        The config.
    """
    cfg = evaluation_skeleton(PORTABLE_IMPORTS, TORCHSCRIPT_DEF, _ITEMS, list(transforms), inferer, data="@items")
    cfg.update({"dataset_dir": dataset_dir, "items": items})
    with_xray_ids(cfg)
    if output == "segmentation":
        return add_segmentation_output(cfg, class_names, output_ext, mask_values)
    if class_names:
        cfg["class_names"] = list(class_names)
    if output == "classification":
        cfg["postprocessing"]["transforms"] = [{"_target_": "Activationsd", "keys": "pred", activation: True}]
    saver = csv_saver(output)
    if output == "detection":  # (N, 6) boxes of one image: kept whole (not decollated along N), one CSV row
        cfg["evaluator"]["decollate"] = False
        saver["batch_transform"] = "$lambda batch: [{'filename_or_obj': batch['image'].meta['filename_or_obj'][0]}]"
        saver["output_transform"] = "$lambda output: [output['pred'].flatten()]"
    cfg["handlers"].append(saver)
    return cfg


def csv_saver(output: str, text: bool = False) -> dict[str, Any]:
    """MONAI's ``ClassificationSaver`` of the network outputs: one CSV row per input, its file then the values.

    Args:
        output: ``"features"`` (``features.csv``), ``"classification"`` (``predictions.csv``) or ``"detection"``.
        text: the inputs are reports: a row is named by the item's ``id``, else its ``text_file``, else its first words.

    Returns:
        The handler config.
    """
    filename = {"features": "features.csv", "classification": "predictions.csv", "detection": "detections.csv"}[output]
    return {"_target_": "ClassificationSaver", "output_dir": "@output_dir", "filename": filename,
            "batch_transform": TEXT_ITEM_NAMES if text else ITEM_NAMES, "output_transform": "$monai.handlers.from_engine(['pred'])"}


def ddp_overlay(train: Mapping[str, Any], project_overlay: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``configs/multi_gpu_train.json``: the Zoo's overlay that runs ``train.json`` under ``torchrun``.

    The project's own overlay of the bundle (``bundles/multi_gpu*.json``) is used when it fits the
    bundle; otherwise the Zoo's form: ``torch.distributed`` initialised, the training loader sampled by a
    ``DistributedSampler``, the network wrapped in ``DistributedDataParallel``, and the handlers that write
    files (savers, writers, progress) kept on rank 0 only.

    Args:
        train: the bundle's ``train.json``.
        project_overlay: the project's overlay for this kind of bundle, if any.

    Returns:
        The overlay config (merge after ``train.json``).
    """
    if project_overlay is not None:
        return {k: copy.deepcopy(v) for k, v in project_overlay.items() if not k.startswith("_")}
    writes = ("Saver", "Writer", "ProgressBar", "TensorBoard", "History")
    return {
        "device": "$torch.device('cuda', int(os.environ.get('LOCAL_RANK', 0))) if torch.cuda.is_available() else torch.device('cpu')",
        "ddp_backend": "$'nccl' if torch.cuda.is_available() else 'gloo'",
        "ddp_network": {"_target_": "torch.nn.parallel.DistributedDataParallel", "module": "@network",
                        "device_ids": "$[@device] if @device.type == 'cuda' else None", "find_unused_parameters": True},
        "train#trainer#network": "@ddp_network",
        "train#dataloader#sampler": {"_target_": "torch.utils.data.DistributedSampler", "dataset": "@train#dataloader#dataset",
                                     "shuffle": True, "seed": "@seed" if "seed" in train else 0},
        "train#dataloader#shuffle": False,
        "train#trainer#train_handlers": (f"$@train#handlers if torch.distributed.get_rank() == 0 else [h for h in @train#handlers "
                                         f"if not any(w in type(h).__name__ for w in {list(writes)})]"),
        "initialize": ["$import torch.distributed", "$import ignite",
                       "$torch.distributed.is_initialized() or torch.distributed.init_process_group(backend=@ddp_backend)",
                       "$torch.cuda.set_device(@device) if torch.cuda.is_available() else None"]
                      + [s for s in train.get("initialize", []) if isinstance(s, str) and "set_determinism" in s],
        "run": ["$@train#trainer.add_event_handler(ignite.engine.Events.EPOCH_STARTED, "
                "lambda e: e.data_loader.sampler.set_epoch(e.state.epoch))"] + list(train.get("run", [])),
        "finalize": ["$torch.distributed.is_initialized() and torch.distributed.destroy_process_group()"],
    }


def save_torchscript(net: torch.nn.Module, example: torch.Tensor, path: Path, metadata: Mapping[str, Any],
                     inference: Mapping[str, Any], trace: bool = False) -> torch.jit.ScriptModule:
    """Write ``models/model.ts``: ``net`` scripted (or traced on ``example``), metadata and config inside.

    A traced network must give the eager one's output on ``example`` (checked here), so it is
    only used at the input size the bundle's inference feeds.

    Args:
        net: the tensor-only network, in eval mode.
        example: an input of the bundle's input size.
        path: the file to write.
        metadata: the bundle's metadata.
        inference: the bundle's inference config (saved as ``inference.json`` inside, as ``ckpt_export`` does).
        trace: trace instead of script.

    Returns:
        The TorchScript module.
    """
    from monai.data import save_net_with_metadata

    with torch.no_grad():
        jit = torch.jit.trace(net, example, check_trace=False) if trace else torch.jit.script(net)
        torch.testing.assert_close(jit(example), net(example), rtol=1e-4, atol=1e-5)
    save_net_with_metadata(jit, str(path), include_config_vals=False, meta_values=dict(metadata),
                           more_extra_files={"inference.json": json.dumps(inference).encode()})
    return jit


def needs_medcoss(cfg: Any) -> bool:
    """Whether a config imports or calls medcoss_monai (a path of its data cache, ``.../medcoss_monai/...``, does not)."""
    return re.search(r"medcoss_monai(?!/)", json.dumps(cfg).replace("\\\\", "/")) is not None


def xray_loading(keys: str | Sequence[str], gray_keys: str | Sequence[str] | None = None) -> list[dict[str, Any]]:
    """MONAI transforms that load radiographs as ``LoadXRayd`` does: one gray channel (1, rows, cols) in [0, 1].

    ``LoadImaged`` reads each file with ``PILReader`` (PNG/JPEG) or, when PIL cannot, ``PydicomReader``
    (DICOM, header kept for the scaling); a ``Lambdad`` then applies :data:`XRAY_IDS` ``xray_gray``:
    DICOM stored values by the ``BitsStored`` range (and the modality rescale), ``MONOCHROME1``
    inverted; PNG/JPEG by the file's integer range, colour by luma. The config using them needs
    :data:`XRAY_IDS` (:func:`with_xray_ids`).

    Args:
        keys: keys holding file paths (labels included: a PNG mask is read by the same ``LoadImaged``).
        gray_keys: the radiograph keys to scale (default ``keys``).

    Returns:
        Raw transform configs.
    """
    keys = [keys] if isinstance(keys, str) else list(keys)
    readers = [{"_target_": "monai.data.PydicomReader", "swap_ij": False, "prune_metadata": False},
               {"_target_": "monai.data.PILReader", "reverse_indexing": False}]  # tried last first: PIL, then DICOM
    return [{"_target_": "LoadImaged", "keys": keys, "reader": readers, "image_only": True,
             "ensure_channel_first": True, "dtype": None},
            {"_target_": "Lambdad", "keys": keys if gray_keys is None else gray_keys, "func": "@xray_gray"}]


def with_xray_ids(cfg: dict[str, Any]) -> dict[str, Any]:
    """Add :data:`XRAY_IDS` (:data:`SLIDE_IDS`) to a config whose transforms load radiographs (slide tiles); ``cfg``
    is returned."""
    for ref, ids in (("@xray_gray", XRAY_IDS), ("@named_tile", SLIDE_IDS)):
        if ref in json.dumps({k: v for k, v in cfg.items() if k not in ids}):
            cfg.update({k: v for k, v in ids.items() if k not in cfg})
    return cfg


def _portable_transform(transform: Any) -> list[Any]:
    """One raw transform config as MONAI transforms: ``LoadXRayd`` becomes :func:`xray_loading`."""
    if not isinstance(transform, dict):
        return [transform]
    t = {k: _portable_value(v) for k, v in transform.items()}
    if t.get("track_meta") is False:
        del t["track_meta"]  # the outputs are named from the image's metadata
    target = t.get("_target_")
    if target == "medcoss_monai.transforms.LoadXRayd":
        return xray_loading(t.get("keys", ["image"]))
    if target == "medcoss_monai.transforms.LoadSlideTiled" and set(t) <= {"_target_", "keys", "size", "level"}:
        size, level = list(t.get("size", (224, 224))), int(t.get("level", 0))
        keys = [t["keys"]] if isinstance(t.get("keys", "image"), str) else list(t["keys"])
        return [{"_target_": "Lambda",
                 "func": f"$lambda d: dict(d, **{{k: @named_tile(dict(d, image=d[k]), {size}, {level}) for k in {keys}}})"}]
    if target == "medcoss_monai.transforms.ReportTextd":
        return [{"_target_": "Lambda", "func": "@report_text"}]
    if target == "medcoss_monai.transforms.TokenizeTextd":
        length = t.get("max_length", 112)  # a number, or a reference such as "@max_text_len"
        return [{"_target_": "Lambda", "func": f"$lambda d: @tokenize(d, {length})"}]
    if target == "SelectItemsd" and "input_ids" in json.dumps(t.get("keys")):
        keys = [t["keys"]] if isinstance(t["keys"], str) else list(t["keys"])
        return [{**t, "keys": keys + [k for k in _TEXT_KEEP if k not in keys], "allow_missing_keys": True}]
    return [t]


def _portable_value(value: Any) -> Any:
    if isinstance(value, list):
        return [u for v in value for u in _portable_transform(v)]
    if isinstance(value, dict):
        return {k: _portable_value(v) for k, v in value.items()}
    return value


def make_portable_transforms(transforms: Sequence[Any]) -> list[Any]:
    """Raw transform configs with MONAI loading in place of ``LoadXRayd`` (its config needs :func:`with_xray_ids`)
    and the image metadata kept."""
    return _portable_value(copy.deepcopy(list(transforms)))


def make_portable(cfg: Mapping[str, Any], output: str, dataset_dir: str = "") -> dict[str, Any] | None:
    """A MedCoSS inference config (:func:`~.zoo_configs.inference_skeleton` and its output) with MONAI and PyTorch only.

    The network becomes the TorchScript ``models/model.ts``, inputs are read by MONAI, ``LoadXRayd``
    becomes MONAI loading (:func:`xray_loading`: DICOM, PNG, JPEG), ``LoadSlideTiled`` a ``Lambda`` of
    :data:`SLIDE_IDS` (``WSIReader`` with OpenSlide, ``PILReader``), reports are read and tokenized
    with the HF tokenizer the bundle ships (:data:`TEXT_IDS`), and features or class probabilities are
    written by MONAI's ``ClassificationSaver`` (``features.csv``, ``predictions.csv``: the input, then the values).

    Args:
        cfg: the inference config.
        output: ``"features"``, ``"classification"`` or ``"segmentation"``.
        dataset_dir: the default input (the sample data's held-out split).

    Returns:
        The new config, or None when something still needs medcoss_monai (a transform or id it cannot translate).
    """
    text = "prepare_batch" in cfg  # token ids and a mask: the text ids replace the package's tokenizer and batch
    keep = ("imports", "network_def", "datalist", "sample_datalist", "dataset_dir", "handlers", "prepare_batch")
    new = {k: _portable_value(copy.deepcopy(v)) for k, v in cfg.items() if k not in keep}
    new = {"imports": list(PORTABLE_IMPORTS) + (TEXT_IMPORTS if text else []), "dataset_dir": dataset_dir,
           "network_def": TORCHSCRIPT_DEF, "datalist": _TEXT_ITEMS if text else _ITEMS, **new}
    if text:
        new.update(copy.deepcopy(TEXT_IDS))
    new["handlers"] = [copy.deepcopy(cfg["handlers"][0])]  # the weights loader
    if output != "segmentation":
        new["handlers"].append(csv_saver(output, text))
    if needs_medcoss(new):
        return None
    return with_xray_ids(new)

