"""Request and response bodies of the JSON API (names fixed by the API contract)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class NeighborOut(BaseModel):
    rank: int
    image_id: str
    diagnosis: str
    group: str | None
    distance: float
    metadata: dict[str, str] = {}  # age, sex, site, attribution, license where known; never patient or lesion ids
    image_url: str
    qam_url: str
    ram_url: str


class UncertaintyOut(BaseModel):
    """How far to trust the vote (``index.uncertainty``); the fields are None where the index has no novelty
    reference (built before it), calibration or prediction sets."""

    novelty_percentile: float | None  # further from the archive than this % of its own cases are from the rest
    novelty_words: str  # the novelty as a person reads it; shown before the vote
    unlike_archive: bool | None  # above the threshold: the vote compares it with cases it may not resemble
    novelty_threshold: float | None = None
    stated_false_alarm_rate: float | None = None  # of cases like the archive's, the share flagged
    novelty_method: str | None = None
    calibrated_probabilities: dict[str, float] | None = None  # beside the raw vote shares
    calibration_method: str | None = None
    prediction_set: list[str] | None = None  # holds the true diagnosis at set_level (split-conformal)
    set_level: float | None = None
    set_words: str | None = None  # "melanoma or nevus, at 90%"


class QueryOut(BaseModel):
    query_id: str
    positive_class: str
    positive_probability: float
    melanoma_probability: float | None  # None when the archive holds no melanoma
    class_probabilities: dict[str, float]  # every diagnosis of the archive, largest share first
    summary: str  # the vote in words: "7 of 10 nearest cases: melanoma; 3 nevus"
    vote: str = "uniform"  # "distance": each case weighed by 1 / squared distance (the model's setting)
    archive_id: str | None = None  # set when the query is an archive case (then never its own neighbour)
    where: str | None = None  # the filter the neighbours passed (index.filters), if any
    region: str | None = None  # boxes searched, "x0,y0,x1,y1;..." in pixels of the query image shown
    similar: list[str] = []  # cases the query was moved toward (refine by example)
    not_similar: list[str] = []  # and away from
    k: int
    # the median distance from an archive case to its 10th nearest other case: a scale for `distance`
    typical_distance: float | None = None
    query_image_url: str
    uncertainty: UncertaintyOut | None = None
    neighbors: list[NeighborOut]


class FeedbackIn(BaseModel):
    query_id: str = Field(min_length=1, max_length=64)
    image_id: str = Field(min_length=1, max_length=256)
    relevant: bool


class FeedbackOut(BaseModel):
    ok: bool
    feedback_id: int


class AssignIn(BaseModel):
    image_id: str = Field(min_length=1, max_length=256)
    group: str | None = Field(default=None, max_length=200)


class RenameIn(BaseModel):
    old: str = Field(min_length=1, max_length=200)
    new: str = Field(min_length=1, max_length=200)


class MergeIn(BaseModel):
    source: str = Field(min_length=1, max_length=200)
    target: str = Field(min_length=1, max_length=200)


class CreateGroupIn(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    disease: str | None = None


class ErrorOut(BaseModel):
    """Every refusal: one line a person can read."""

    detail: str


# the refusals any route may answer with, declared so that clients (and the schema fuzz test) know them
ERRORS: dict[int | str, dict] = {
    code: {"model": ErrorOut} for code in (400, 401, 403, 404, 409, 410, 413, 415, 422, 429, 503)
}
