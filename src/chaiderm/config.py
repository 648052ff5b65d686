"""Typed settings. Every trained model saves its ``RunConfig`` as ``config.json`` beside the weights.

Every setting with a closed set of values or a range has it declared once, in ``RULES``, and is checked
once, when its dataclass is built (``__post_init__``): a bad value is a :class:`SettingError` naming the
setting ("vote: 'foo' is not one of uniform, distance"). The CLI reports it under the option's flag.
A new setting is a field here (plus a rule, if it has one) and an option of its name in the CLI.
"""

from __future__ import annotations

import dataclasses
import json
import numbers
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple, get_args

from chaiderm.errors import DataError

# test-time views averaged into one embedding (models.embedding.VIEWS has the flips of each)
Views = Literal["none", "flip", "flip4"]
# colour normalisation of every input (data.transforms.normalise_colour)
Colour = Literal["none", "shades_of_gray"]
# how convolutions pad (models.registry.set_padding)
Padding = Literal["zeros", "replicate", "reflect"]
# 32: the backbone's own final map; 16: its last downsampling removed (models.registry.set_map_stride)
MapStride = Literal[32, 16]
# how the k nearest cases vote (index.knn.knn_vote)
Vote = Literal["uniform", "distance"]
Head = Literal["conv", "none"]
# "none": a model not trained as one (an ensemble of trained members, models.ensemble)
Logic = Literal["disease", "joint", "hierarchical", "nonhierarchical", "classifier", "none"]
Protocol = Literal["mined", "random"]
Reduction = Literal["mean", "nonzero_mean"]
Optimizer = Literal["adam", "sgd"]
SelectMetric = Literal["auc", "loss", "last"]

DEFAULT_VIEWS: Views = "none"  # test-time views of a new model


class Range(NamedTuple):
    low: float
    high: float | None = None  # None: no upper bound
    high_open: bool = False  # True: [low, high)

    def __contains__(self, value: object) -> bool:
        if not isinstance(value, numbers.Real) or isinstance(value, bool):
            return False
        if value < self.low:
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def __str__(self) -> str:
        if self.high is None:
            return f"at least {self.low:g}"
        return f"in [{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


# The one table of allowed values, by setting name (names are unique across the dataclasses below).
RULES: dict[str, Any] = {
    "views": Views,
    "colour": Colour,
    "padding": Padding,
    "map_stride": MapStride,
    "vote": Vote,
    "head": Head,
    "logic": Logic,
    "protocol": Protocol,
    "reduction": Reduction,
    "optimizer": Optimizer,
    "select_metric": SelectMetric,
    "image_size": Range(1),
    "load_size": Range(1),
    "embedding_dim": Range(1),
    "epochs": Range(0),
    "batch_size": Range(1),
    "m_per_class": Range(1),
    "chunk_size": Range(1),
    "triplets_per_epoch": Range(1),
    "val_k": Range(1),
    "lr_step": Range(0),
    "feedback_weight": Range(0),
    "mask_weight": Range(0),
    "mask_dice_share": Range(0, 1),
    "ema_decay": Range(0, 1, high_open=True),
    "colour_jitter": Range(0, 1, high_open=True),
    "zoom": Range(1, 4),
    "holdout": Range(0, 0.5, high_open=True),
    "seeds": Range(1),  # reproduce.ReproduceSettings
}


def choices(setting: str) -> tuple[Any, ...]:
    """The values a closed setting may take, in their declared order (``choices("vote")``)."""
    return get_args(RULES[setting])


class SettingError(DataError):
    """A setting with a value outside its rule. ``setting`` is its name; the CLI shows its flag instead."""

    def __init__(self, setting: str, detail: str):
        self.setting, self.detail = setting, detail
        super().__init__(None, f"{setting}: {detail}")


def check_setting(setting: str, value: Any, *, name: str | None = None) -> Any:
    """``value`` if ``RULES`` allows it for ``setting`` (a name without a rule allows anything), else a
    :class:`SettingError` naming ``name`` (default: ``setting``). For functions of the public API that
    take a setting outside a config, and for settings of other names that follow a rule here."""
    rule = RULES.get(setting)
    if rule is None:
        return value
    if isinstance(rule, Range):
        if value not in rule:
            raise SettingError(name or setting, f"must be {rule}, got {value!r}")
    elif value not in get_args(rule) or isinstance(value, bool):
        raise SettingError(name or setting, f"{value!r} is not one of {', '.join(map(str, get_args(rule)))}")
    return value


def check_fields(obj: Any, rules: dict[str, str] | None = None) -> None:
    """Check every field of a settings dataclass by its rule in ``RULES``; ``rules`` maps a field of another
    name to the rule it follows (``{"teach_padding": "padding"}``). For ``__post_init__``."""
    for f in dataclasses.fields(obj):
        check_setting((rules or {}).get(f.name, f.name), getattr(obj, f.name), name=f.name)


@dataclass
class ModelConfig:
    backbone: str = "efficientnet_lite0"
    pretrained: bool = True
    weights: str | None = None  # user-supplied backbone weights (e.g. AlexNet), safetensors or .pt
    head: Head = "conv"  # "none": embed the backbone's own map (Baseline)
    embedding_dim: int = 1024  # the paper's activation-map dimensionality
    normalize: bool = False  # L2-normalise the pooled vector? Raw won on ISIC val (docs/results.md)
    image_size: int = 224  # network input side (square centre crop / random crop)
    load_size: int = 256  # images are resized so the shorter side is this, then cropped
    freeze_stages: int | None = None  # leading backbone stages kept frozen; None: the backbone's default
    n_classes: int = 0  # >0 adds a classifier head (BaselineFT)
    # test-time views averaged into one embedding. An inference setting: indexes record the views they
    # were built with and queries follow the index; training's per-epoch validation embeds single views.
    views: Views = DEFAULT_VIEWS
    # colour normalisation of every input, in training and inference: "shades_of_gray" is colour
    # constancy (p = 6)
    colour: Colour = "none"
    # how convolutions pad. "replicate" repeats edge pixels: the maps carry no
    # frame from the padding and a uniform image has a flat map. "zeros" (the ImageNet weights' own) stays
    # the default: on ISIC it scores 0.07 higher validation AUC@20 and locates ham10000_dev lesions
    # better (research/maps/map_localisation_round1.json)
    padding: Padding = "zeros"
    # 32: the backbone's own final map; 16: its last downsampling removed, maps of twice the resolution
    map_stride: MapStride = 32
    # how the k nearest cases vote: "uniform" (one vote each) or "distance" (each weighed
    # by 1 / squared distance; better in 5 of 5 cross-validation folds, research/recipe_rounds/cv_round8.json).
    # An inference setting: query,
    # serve and evaluate follow the model's.
    vote: Vote = "uniform"
    # backbone "ensemble" (models.ensemble): each member's own ModelConfig, as a dict
    members: list[dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        check_fields(self)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainConfig:
    logic: Logic = "disease"
    epochs: int = 3
    batch_size: int = 48
    m_per_class: int = 4  # images per (disease or group) label in a mined batch
    protocol: Protocol = "mined"  # random: the paper's N random triplets per epoch
    triplets_per_epoch: int = 150_000
    margin: float = 1.0
    reduction: Reduction = "nonzero_mean"
    optimizer: Optimizer = "adam"
    lr_backbone: float = 1e-4  # transferred layers
    lr_head: float = 1e-3  # new layers
    momentum: float = 0.9
    lr_step: int = 0  # "step" policy: decay every lr_step epochs (0 = constant)
    lr_gamma: float = 0.1
    chunk_size: int = 16  # images per forward chunk (faster on CPU than one big batch)
    seed: int = 0
    val_k: int = 10
    select_metric: SelectMetric = "auc"
    positive_class: str = "melanoma"
    feedback_weight: float = 1.0
    # weight of the lesion-mask term (training.terms.MaskTerm), used when mask data is given; 3 locates
    # held-out lesions better than 1 (research/maps/map_localisation_round5.json, _round6.json)
    mask_weight: float = 3.0
    # what the mask term asks of a map: 2 * ((1 - s) * (1 - mass in lesion) + s * (1 - soft Dice)). Mass
    # alone rewards a peak inside the lesion, which the 0.5-threshold Jaccard scores low; Dice alone, a map
    # that spreads past the lesion's edge (research/maps/maps.md)
    mask_dice_share: float = 0.5
    # >0: validate and save an exponential moving average of the weights (per step) instead of the
    # raw weights; smooths the step-to-step drift of short, noisy fine-tuning runs
    ema_decay: float = 0.0
    # >0: random brightness / contrast / saturation factors in [1 - x, 1 + x] on training inputs
    colour_jitter: float = 0.0
    # >1: training crops as small as image_size / zoom pixels, enlarged (1: 0.8-1 of the side, never enlarged)
    zoom: float = 1.0
    # >0: this fraction of the training data (stratified, whole lesions) is not trained on; it chooses the
    # epoch kept instead of the validation split, and the index sets its novelty threshold on it, so the
    # validation split stays unused for the prediction sets' calibration (data.splits.holdout_split)
    holdout: float = 0.0
    recipe: str = ""  # the named recipe (training.recipes) that fixed some of these settings, if any

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class DataConfig:
    train: str = ""
    extra: list[str] = field(default_factory=list)  # more training sources, their rows after train's
    val: str | None = None
    train_split: str | None = None
    val_split: str | None = None
    groups: str | None = None
    init: str | None = None  # run folder the weights were fine-tuned from
    feedback: str | None = None
    masks: str | None = None  # images with lesion masks that taught the maps where lesions are
    train_fingerprint: str = ""  # hash of (image id, diagnosis, group) rows, to trace a result to its data
    n_train: int = 0
    n_val: int = 0
    diagnoses: dict[str, int] = field(default_factory=dict)  # training rows per canonical diagnosis
    vocabulary: str = ""  # data.diagnoses.VOCABULARY the labels were read with ("" before it existed)
    members: list[str] | None = None  # an ensemble's member run folders, as they were combined
    holdout: list[str] = field(default_factory=list)  # image ids of --data held out of training (TrainConfig)


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    version: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | Path) -> None:
        from chaiderm._io import write_json

        write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> RunConfig:
        return cls(
            model=model_from_dict(d.get("model", {}), f"{source}: model"),
            train=_build(TrainConfig, d.get("train", {}), f"{source}: train"),
            data=_build(DataConfig, d.get("data", {}), f"{source}: data"),
            version=str(d.get("version", "")),
        )

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise DataError(path, "config file not found") from None
        except json.JSONDecodeError as e:
            raise DataError(path, f"not valid JSON ({e})") from None
        return cls.from_dict(d, str(path))


def model_from_dict(values: dict[str, Any], where: str = "model") -> ModelConfig:
    """A ``ModelConfig`` from its saved form, as written by any version (an ensemble's members too)."""
    values = dict(values)
    values.setdefault("views", "none")  # configs from before the setting embedded single views
    values.setdefault("padding", "zeros")  # ... and padded with zeros
    values.setdefault("map_stride", 32)
    return _build(ModelConfig, values, where)


class RemovedSettingWarning(UserWarning):
    """An older config.json set a setting that left the product; it was ignored."""


class Removed(NamedTuple):
    """A setting that left the product: the research record rejected it."""

    default: Any  # the value every config before the removal carries unless the user chose otherwise
    why: str
    refuse: bool  # a non-default value changes what the saved weights compute: refuse, never guess


# Settings of older config.json files. At their default they are dropped silently (every file written
# while they existed carries them). A non-default ``ce_weight`` only shaped training, so the weights load
# as they are, with a one-line notice; a non-default ``map_background`` changes every embedding the
# weights compute, so such a model is refused rather than silently computed another way.
REMOVED: dict[tuple[type, str], Removed] = {
    (TrainConfig, "ce_weight"): Removed(
        0.0,
        "removed: a classifier's cross-entropy beside the triplet loss scored no better than another seed "
        "(research/recipe_rounds/cv_round13.json); the weights load unchanged, but cannot resume training",
        refuse=False,
    ),
    (ModelConfig, "map_background"): Removed(
        "none",
        "removed: border subtraction lowered map localisation (research/maps/maps.md); this version cannot "
        "compute the embedding this model was trained with. For maps without the padding imprint, train "
        "with --padding replicate",
        refuse=True,
    ),
}


def _build(kind: type, values: dict[str, Any], where: str) -> Any:
    values = dict(values)
    for (owner, name), gone in REMOVED.items():
        if owner is not kind or name not in values:
            continue
        value = values.pop(name)
        if value == gone.default:
            continue
        if gone.refuse:
            raise DataError(None, f"{where}.{name} = {value!r}: {gone.why}")
        warnings.warn(f"{where}.{name} = {value!r} ignored: {gone.why}", RemovedSettingWarning, stacklevel=3)
    names = {f.name for f in dataclasses.fields(kind)}
    unknown = set(values) - names
    if unknown:
        raise DataError(None, f"{where}: unknown field(s) {sorted(unknown)}")
    try:
        return kind(**values)
    except SettingError as e:  # a saved file's fault, not an option's: name the file and section
        raise DataError(None, f"{where}.{e.setting}: {e.detail}") from None
