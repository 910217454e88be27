"""The typed request and response models of the HTTP API (they are the OpenAPI spec)."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

ID_PATTERN, PLACEMENT_PATTERN = r"^[A-Za-z0-9_.:@/+=-]+$", r"^[A-Za-z0-9_.:-]+$"  # placements: "feed", "1:1"
Id = Annotated[str, Field(min_length=1, max_length=128, pattern=ID_PATTERN)]
Placement = Annotated[str, Field(min_length=1, max_length=64, pattern=PLACEMENT_PATTERN)]
FeatureValue = Union[Annotated[str, Field(max_length=256)], Annotated[float, Field(allow_inf_nan=False)], int, bool, None,
                     Annotated[list[Annotated[str, Field(max_length=64)]], Field(max_length=64)]]
MAX_FEATURES = 32


class DecisionQuery(BaseModel):
    """The query of ``GET /v1/creative`` (checked in one step; its fields are the operation's documented parameters)."""

    model_config = ConfigDict(extra="ignore")

    user_id: Id
    product_id: Id
    placement: Placement = "feed"
    features: Annotated[str, Field(max_length=4096, description="user features as a JSON object, e.g. "
                                                                 "{\"age\": 34}")] | None = None

    @classmethod
    def openapi_parameters(cls) -> list[dict]:
        """The fields as OpenAPI query parameters."""
        schema = cls.model_json_schema()
        return [{"name": name, "in": "query", "required": name in schema.get("required", []), "schema": field,
                 **({"description": field["description"]} if "description" in field else {})}
                for name, field in schema["properties"].items()]


class DecisionRequest(BaseModel):
    """Who asks for which product where; `features` (optional) place the user in an audience group."""

    model_config = ConfigDict(extra="forbid")

    user_id: Id
    product_id: Id
    placement: Placement = "feed"
    features: dict[Annotated[str, Field(max_length=64)], FeatureValue] | None = None

    @field_validator("features")
    @classmethod
    def _few_features(cls, value):
        if value is not None and len(value) > MAX_FEATURES:
            raise ValueError(f"at most {MAX_FEATURES} user features")
        return value


class DecisionResponse(BaseModel):
    impression_id: str = Field(description="send it back with POST /v1/clicks when the user clicks")
    creative_id: str
    creative_url: str
    product_id: str
    placement: str
    arm: str
    group_id: int = Field(description="audience group; -1 is the cold-start group (no features)")
    cold_start: bool
    bucket: Literal["control", "treatment"]
    propensity: float = Field(description="probability the policy gave this creative at decision time")
    policy: str
    model_version: str = Field(description="linucb@<watermark>: the event-log position the bandit had learned to")


class ClickRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    impression_ids: list[Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[0-9a-f]{1,64}$")]] = Field(
        min_length=1, max_length=1000)


class ClickResponse(BaseModel):
    received: int
    new: int = Field(description="clicks not recorded before (a repeated click is counted once)")


class BucketGroupCTR(BaseModel):
    bucket: str
    group_id: int
    impressions: int
    clicks: int
    ctr: float
    ci_low: float
    ci_high: float


class LiftReport(BaseModel):
    lift: float | None
    ci_low: float | None
    ci_high: float | None
    p_value: float | None


class OffPolicyReport(BaseModel):
    method: str
    estimate: float
    ci_low: float
    ci_high: float
    n: int
    effective_sample_size: float


class Report(BaseModel):
    cells: list[BucketGroupCTR] = Field(description="CTR per bucket and audience group, Wilson 95 % intervals")
    lift: LiftReport | None = Field(description="treatment over control, delta-method 95 % interval")
    off_policy: OffPolicyReport | None = Field(
        description="the treatment policy's CTR estimated from the control bucket alone (SNIPS)")
    watermark: int


class Health(BaseModel):
    status: str
    pid: int
    watermark: int
    keys: int
    arms: int
    cache_state: str = Field(description="a digest of the creatives this worker served per key at its last catch-up "
                                         "(equal on every worker that has caught up with the cache)")
    sync_seconds: float = Field(description="how often each worker catches up with the log and the cache")


class RefreshResponse(BaseModel):
    learned: int
    watermark: int
    cache_state: str = Field(description="the answering worker's cache state after the refresh (see Health)")


class ErrorResponse(BaseModel):
    error: str
