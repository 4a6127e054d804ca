"""
User-input checks run before anything heavy is built (config, datasets, output folder, weights):
each problem is a :class:`~d2_detr.utils.cli.UserError` naming the file, key or name and what
to do.
"""

import os
import re

import yaml
from detectron2.config import CfgNode, get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog

from ..config import add_detr_config
from ..utils.cli import UserError, closest_names
from .train_loader import check_train_sampler

__all__ = [
    "check_datasets",
    "check_num_classes",
    "check_output_dir",
    "check_sampler",
    "check_weights_path",
    "check_weights_fit",
    "check_config_file",
    "config_keys",
    "load_config",
    "validate_dataset_names",
    "weights_fit",
]


def config_keys(cfg, prefix=""):
    """Every full key (``MODEL.DETR.NUM_CLASSES``) of a CfgNode."""
    keys = []
    for k, v in cfg.items():
        full = f"{prefix}{k}"
        keys += config_keys(v, full + ".") if isinstance(v, CfgNode) else [full]
    return keys


def _unknown_key(cfg, key, where):
    close = closest_names(key, config_keys(cfg))
    if not close:  # compare the last part only (e.g. a key under the wrong node)
        leaf = key.rsplit(".", 1)[-1]
        close = [k for k in config_keys(cfg) if k.rsplit(".", 1)[-1] in closest_names(
            leaf, {c.rsplit(".", 1)[-1] for c in config_keys(cfg)}, n=3)][:5]  # fmt: skip
    hint = f"did you mean: {', '.join(close)}" if close else "see d2_detr/config.py for the keys"
    return UserError(f"{where}: unknown config key {key}", hint)


def load_config(config_file, opts=()):
    """
    Detectron2's defaults + d2-detr's keys + ``config_file`` + ``opts`` (KEY VALUE ...), not
    frozen. UserError for a missing / unparsable file, an unknown key (with the closest keys) or
    a value of the wrong type.
    """
    if not config_file:
        raise UserError("no config file given", "pass --config-file configs/....yaml")
    if not os.path.isfile(config_file):
        raise UserError(
            f"config file {config_file} does not exist",
            "the shipped configs are under configs/ (e.g. configs/ConcreteDefects/"
            "detr_tiny_cpu.yaml)",
        )
    check_config_file(config_file)
    cfg = get_cfg()
    add_detr_config(cfg)
    try:
        # allow_unsafe=False: Detectron2's default falls back to yaml.unsafe_load, which runs
        # the code a "!!python/..." tag names; check_config_file refused those already
        cfg.merge_from_file(config_file, allow_unsafe=False)
    except yaml.YAMLError as e:
        raise UserError(f"config file {config_file} is not valid YAML: {_first_line(e)}") from None
    except KeyError as e:
        key = _key_in(str(e))
        if key:
            raise _unknown_key(cfg, key, f"config file {config_file}") from None
        raise UserError(f"config file {config_file}: {_first_line(e)}") from None
    except (ValueError, TypeError, AssertionError, AttributeError, OSError) as e:
        raise UserError(f"config file {config_file}: {_first_line(e)}", _type_hint(e)) from None
    opts = list(opts or [])
    if len(opts) % 2:
        raise UserError(
            f"command-line overrides must be KEY VALUE pairs; {opts[-1]!r} has no value",
            "e.g. SOLVER.MAX_ITER 100 OUTPUT_DIR output/run",
        )
    for key in opts[::2]:
        if _lookup(cfg, key) is _MISSING:
            raise _unknown_key(cfg, key, "command line")
    try:
        cfg.merge_from_list(opts)
    except (ValueError, TypeError, AssertionError, KeyError) as e:
        raise UserError(f"command line: {_first_line(e)}", _type_hint(e)) from None
    return cfg


def _base_paths(path, data):
    """The ``_BASE_`` files of config ``path`` (already loaded as ``data``), resolved as
    Detectron2's ``load_yaml_with_base`` resolves them (relative to ``path``'s folder)."""
    bases = data.get("_BASE_") if isinstance(data, dict) else None
    if bases is None:
        return []
    out = []
    for base in bases if isinstance(bases, list) else [bases]:
        if not isinstance(base, str):
            raise UserError(f"config file {path}: _BASE_ must be a file name, got {base!r}")
        if base.startswith("~"):
            base = os.path.expanduser(base)
        if not base.startswith(("/", "https://", "http://")):
            base = os.path.join(os.path.dirname(path), base)
        out.append(base)
    return out


def check_config_file(config_file):
    """
    Read ``config_file`` and its ``_BASE_`` chain with ``yaml.safe_load`` only; UserError for a
    file that is missing, not YAML, not a mapping of keys, a missing base, a ``_BASE_`` loop,
    or YAML tags that would construct Python objects (``!!python/object/apply:os.system``: a
    config file must never run code).
    """
    chain, shown = [], []  # real paths (to find loops) and the paths as named (to show them)

    def visit(path):
        real = os.path.realpath(path)
        if real in chain:
            loop = " -> ".join(shown[chain.index(real) :] + [path])
            raise UserError(
                f"config file {config_file}: _BASE_ loop ({loop})",
                "a config may not be its own base, directly or through other files",
            )
        if path.startswith(("https://", "http://")):
            return  # fetched by Detectron2's PathManager, parsed with safe_load there too
        if not os.path.isfile(path):
            what = "is a folder" if os.path.isdir(path) else "does not exist"
            where = f" (a _BASE_ of {shown[-1]})" if chain else ""
            raise UserError(
                f"config file {path}{where} {what}",
                "fix the _BASE_ path (relative to the file that names it) or the --config-file",
            )
        try:
            with open(path, "rb") as f:
                data = yaml.safe_load(f)
        except yaml.constructor.ConstructorError as e:
            raise UserError(
                f"config file {path}: refused, it uses a YAML tag that constructs Python objects "
                f"({_first_line(e)})",
                "config files may hold only plain values (numbers, strings, lists, mappings)",
            ) from None
        except yaml.YAMLError as e:
            raise UserError(f"config file {path} is not valid YAML: {_first_line(e)}") from None
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise UserError(f"config file {path} cannot be read ({_first_line(e)})") from None
        if data is None:
            raise UserError(
                f"config file {path} is empty", "give a Detectron2 YAML config of this project"
            )
        if not isinstance(data, dict):
            raise UserError(
                f"config file {path} holds a YAML {type(data).__name__}, not a mapping of keys",
                "a config file maps keys to values, e.g. 'MODEL: {WEIGHTS: model.pth}'",
            )
        chain.append(real)
        shown.append(path)
        for base in _base_paths(path, data):
            visit(base)
        chain.pop()
        shown.pop()

    visit(os.fspath(config_file))


_MISSING = object()


def _lookup(cfg, key):
    node = cfg
    for part in key.split("."):
        if not isinstance(node, CfgNode) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _key_in(message):
    m = re.search(r"(?:Non-existent (?:config )?key|key): ?([A-Za-z0-9_.]+)", message)
    return m.group(1) if m else None


def _first_line(e):
    text = str(e).strip().strip("'\"")
    return text.splitlines()[0][:300] if text else type(e).__name__


def _type_hint(e):
    if "Type mismatch" in str(e):
        return "give a value of the type of the default (see d2_detr/config.py / Detectron2's)"
    return None


def validate_dataset_names(names, key):
    """UserError for a name not in ``DatasetCatalog``, listing the closest registered names."""
    registered = DatasetCatalog.list()
    for name in names:
        if name not in registered:
            close = closest_names(name, registered)
            hint = (
                f"closest registered names: {', '.join(close)}"
                if close
                else "register it first (d2_detr.data.datasets.register_panoptic_dataset)"
            )
            raise UserError(f"{key}: dataset {name!r} is not registered", hint)


def check_datasets(cfg, splits=("TRAIN", "TEST")):
    """
    Every dataset in ``cfg.DATASETS.<split>`` is registered and its files exist (the paths in
    its metadata; the registered loader's own message says which command creates them).
    """
    for split in splits:
        names = list(cfg.DATASETS[split])
        validate_dataset_names(names, f"DATASETS.{split}")
        for name in names:
            meta = MetadataCatalog.get(name)
            paths = [meta.get(k) for k in ("panoptic_json", "panoptic_root", "image_root")]
            missing = [p for p in paths if p and not os.path.exists(p)]
            if not missing:
                continue
            root = os.environ.get("DETECTRON2_DATASETS", "datasets")
            try:
                DatasetCatalog.get(name)
                message = None
            except FileNotFoundError as e:  # our registration: names the files and the command
                message = str(e)
            first, _, rest = (message or "").partition("\n")
            raise UserError(
                first or f"dataset {name!r}: missing files: {', '.join(missing)}",
                (rest.strip() + "\n  " if rest.strip() else "")
                + f"(DETECTRON2_DATASETS={root}; DATASETS.{split} names the dataset)",
            )


def check_num_classes(cfg, splits=("TRAIN", "TEST")):
    """``MODEL.DETR.NUM_CLASSES`` equals the class count of every dataset (stuff_classes lists
    all classes of a panoptic dataset, as Detectron2's convention; else thing_classes)."""
    if cfg.MODEL.META_ARCHITECTURE != "DETR":
        return
    for split in splits:
        for name in cfg.DATASETS[split]:
            meta = MetadataCatalog.get(name)
            classes = meta.get("stuff_classes") or meta.get("thing_classes")
            if classes and len(classes) != cfg.MODEL.DETR.NUM_CLASSES:
                raise UserError(
                    f"MODEL.DETR.NUM_CLASSES is {cfg.MODEL.DETR.NUM_CLASSES} but dataset "
                    f"{name!r} (DATASETS.{split}) has {len(classes)} classes: {list(classes)}",
                    f"set MODEL.DETR.NUM_CLASSES {len(classes)} (and MODEL.DETR.THING_CLASSES "
                    "to match)",
                )


def check_sampler(cfg):
    """DATALOADER.SAMPLER_TRAIN is one the training stream implements (TrainingSampler,
    RepeatFactorTrainingSampler) and DATALOADER.REPEAT_THRESHOLD a number >= 0."""
    try:
        check_train_sampler(cfg.DATALOADER.SAMPLER_TRAIN, cfg.DATALOADER.REPEAT_THRESHOLD)
    except ValueError as e:
        message, _, hint = str(e).partition("; ")
        raise UserError(message, hint or None) from None


def check_output_dir(path):
    """OUTPUT_DIR is a folder that exists or can be created, and is writable."""
    if not path:
        raise UserError("OUTPUT_DIR is empty", "set OUTPUT_DIR output/<run name>")
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"OUTPUT_DIR {path} is a file, not a folder", "choose another OUTPUT_DIR")
    probe = path
    while not os.path.exists(probe):
        parent = os.path.dirname(os.path.abspath(probe))
        if parent == os.path.abspath(probe):
            break
        probe = parent
    if not os.path.isdir(probe):
        raise UserError(f"OUTPUT_DIR {path}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"OUTPUT_DIR {path} is not writable ({probe})", "choose another OUTPUT_DIR")


def weights_fit(model_shapes, state_dict):
    """
    How a checkpoint's tensors fit a model, by name and shape (pure).

    Args:
        model_shapes: dict name -> shape of the model's state dict.
        state_dict: the checkpoint's tensors / arrays (a ``module.`` prefix of every key, as
            DistributedDataParallel saves them, is ignored as Detectron2's loader ignores it).
    Returns:
        dict: ``loaded`` (names that fit), ``shape`` (list of "name (ckpt shape) != (model
        shape)"), ``missing`` (model names absent from the checkpoint), ``unused`` (checkpoint
        names the model does not have).
    """
    keys = list(state_dict)
    if keys and all(k.startswith("module.") for k in keys):
        state_dict = {k[len("module.") :]: v for k, v in state_dict.items()}
    loaded, shape = [], []
    for name, want in model_shapes.items():
        if name not in state_dict:
            continue
        have = tuple(getattr(state_dict[name], "shape", ()))
        if have == tuple(want):
            loaded.append(name)
        else:
            shape.append(f"{name} {have} != {tuple(want)}")
    return {
        "loaded": loaded,
        "shape": shape,
        "missing": [k for k in model_shapes if k not in state_dict],
        "unused": [k for k in state_dict if k not in model_shapes],
    }


def check_weights_fit(cfg, data, path, eval_only=False, key="MODEL.WEIGHTS"):
    """
    UserError when checkpoint ``data`` (as ``DETRCheckpointer`` reads it) does not fit the model
    of ``cfg``: no tensor fits (another model), or, for ``--eval-only``, any tensor of the
    model missing or of another shape (evaluating a half-loaded model measures nothing).
    Training from a partial fit (e.g. fine-tuning to another class count) is allowed: returns
    one summary line to log instead of a warning per tensor. The model is built on the "meta"
    device (shapes only, no memory). Detectron2's model-zoo ``.pkl`` files, whose names are
    matched by heuristics, are not checked (None).
    """
    import torch
    from detectron2.modeling import META_ARCH_REGISTRY

    if data.get("matching_heuristics") or not isinstance(data.get("model"), dict):
        return None
    try:
        with torch.device("meta"):
            model = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)(cfg)
    except Exception:  # noqa: BLE001  (a model that cannot be built on meta: not checked)
        return None
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    fit = weights_fit(shapes, data["model"])
    n_model, n_ckpt = len(shapes), len(data["model"])
    eg = "; ".join(fit["shape"][:3]) or ", ".join(fit["missing"][:3])
    if not fit["loaded"]:
        raise UserError(
            f"{key} {path}: none of its {n_ckpt} tensors fits the model of this config "
            f"({len(fit['shape'])} with the model's names but other shapes, e.g. {eg or '-'}; "
            f"{len(fit['unused'])} names the model does not have, e.g. "
            f"{', '.join(fit['unused'][:3]) or '-'})",
            "give a checkpoint of this model (tools/train_net.py writes model_final.pth), the "
            "config it was trained with, or convert official DETR weights first "
            "(tools/convert_detr_checkpoint.py)",
        )
    if eval_only and (fit["shape"] or fit["missing"]):
        raise UserError(
            f"{key} {path} does not fit the model of this config: {len(fit['shape'])} "
            f"tensor(s) of another shape, {len(fit['missing'])} missing, of {n_model} "
            f"(e.g. {eg})",
            "--eval-only needs the config the model was trained with (e.g. "
            "MODEL.DETR.NUM_CLASSES, HIDDEN_DIM, NUM_OBJECT_QUERIES, the backbone)",
        )
    if fit["shape"] or fit["missing"]:
        return (
            f"{key} {path}: {len(fit['loaded'])} of the model's {n_model} tensors loaded; "
            f"{len(fit['shape'])} of another shape keep their initial values (e.g. {eg}), "
            f"{len(fit['missing'])} not in the checkpoint"
        )
    return None


def check_weights_path(path, key="MODEL.WEIGHTS"):
    """A local weights path exists (URLs such as ``detectron2://`` are left to the loader)."""
    if path and "://" not in path and not os.path.isfile(path):
        raise UserError(
            f"{key} {path} does not exist" + (" (it is a folder)" if os.path.isdir(path) else ""),
            "give a .pth / .pkl checkpoint, e.g. OUTPUT_DIR/model_final.pth",
        )
