"""The JSON Schemas in schemas/ describe what the service reads and writes, and the README shows them as they are."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from jsonschema import Draft202012Validator

from stream_learner.tools.client import EventProducer
from stream_learner.intake.events import decode_events
from stream_learner.intake.labels import decode_labels
from stream_learner.kafka.predictions import encode_predictions
from stream_learner.records import EventBatch, Predictions, RawRecord

from .test_client import FakeProducer

ROOT = Path(__file__).resolve().parent.parent
KINDS = ("event", "label", "prediction")


def schema(kind: str) -> dict[str, Any]:
    return orjson.loads((ROOT / "schemas" / f"{kind}.schema.json").read_bytes())  # type: ignore[no-any-return]


def validator(kind: str) -> Draft202012Validator:
    return Draft202012Validator(schema(kind), format_checker=Draft202012Validator.FORMAT_CHECKER)


def valid(kind: str, value: Any) -> bool:
    return validator(kind).is_valid(value)


def kind_of(example: dict[str, Any]) -> str:
    return "event" if "features" in example else "prediction" if "prediction" in example else "label"


@pytest.mark.parametrize("kind", KINDS)
def test_the_schemas_are_valid_draft_2020_12(kind: str) -> None:
    s = schema(kind)
    assert s["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(s)
    assert set(s["required"]) <= set(s["properties"]) and "id" in s["required"]


def test_real_predictions_of_the_service_are_valid() -> None:
    n = 20
    scores = np.random.default_rng(0).dirichlet([1.0, 1.0, 1.0], n).astype(np.float32)
    ts = np.where(np.arange(n) % 2 == 0, 1700000000.5, np.nan)
    events = EventBatch([f"e-{i}" for i in range(n)], np.zeros((n, 4), np.float32), ts, np.zeros(n))
    classified = encode_predictions(Predictions(events, scores, 42), "classification")
    regressed = encode_predictions(Predictions(events, scores[:, :1] * 1e3 - 500, 0), "regression")
    from_a_predictor = encode_predictions(Predictions(events, scores, 7, model_generation=3), "classification")
    assert all(orjson.loads(value)["model_generation"] == 3 for value in from_a_predictor)
    with_challengers = encode_predictions(Predictions(events, scores, 7, model="learning_rate_factor=5.0"), "classification")
    assert all(orjson.loads(value)["model"] == "learning_rate_factor=5.0" for value in with_challengers)
    assert all("model" not in orjson.loads(value) for value in classified)
    for value in classified + regressed + from_a_predictor + with_challengers:
        errors = list(validator("prediction").iter_errors(orjson.loads(value)))
        assert errors == [], (value, errors)
    assert "ts" in orjson.loads(classified[0]) and "ts" not in orjson.loads(classified[1])
    assert "scores" not in orjson.loads(regressed[0])


async def test_what_the_client_sends_is_valid_and_what_the_service_decodes() -> None:
    fake = FakeProducer()
    producer = EventProducer(producer=fake, input_dim=4, num_classes=2)  # type: ignore[arg-type]
    await producer.send_events(["a", "b"], np.array([[1, 2, 3, 4], [3.4e38, -3.4e38, 0, 1e-30]], np.float64), ts=1.5)
    await producer.send_event("c", [0.5, 0.5, 0.5, 0.5])
    await producer.send_labels(["a", "b"], [0, 1])
    for topic, value, _ in fake.sent:
        assert valid("event" if topic == "events" else "label", orjson.loads(value)), value


GOOD_EVENTS = [
    {"id": "e-1", "features": [0.1, -2.0, 3.0, 4.0]},
    {"id": "e-2", "features": [1, 2, 3, 4], "ts": 1700000000.5, "source": "ignored"},
    {"id": "e-3", "features": [3.4028235e38, -3.4028235e38, 0.0, 0.0]},
]
BAD_EVENTS = [  # each is dead-lettered by the service, and the schema says no as well
    [1, 2],
    {"features": [1.0, 2.0, 3.0, 4.0]},
    {"id": "", "features": [1.0, 2.0, 3.0, 4.0]},
    {"id": 7, "features": [1.0, 2.0, 3.0, 4.0]},
    {"id": "x"},
    {"id": "x", "features": "1,2,3,4"},
    {"id": "x", "features": ["1", "2", "3", "4"]},
    {"id": "x", "features": [True, 1.0, 2.0, 3.0]},
    {"id": "x", "features": [1e39, 1.0, 2.0, 3.0]},
    {"id": "x", "features": [1.0, 2.0, 3.0, 4.0], "ts": "yesterday"},
]
GOOD_LABELS = [{"id": "e-1", "label": 1}, {"id": "e-2", "label": 0, "note": "ignored"}]
BAD_LABELS = [{"id": "e-1"}, {"label": 1}, {"id": "e-1", "label": "1"}, {"id": "e-1", "label": None}, {"id": "e-1", "label": True}]


def test_the_schemas_agree_with_the_service_decoder() -> None:
    def records(values: list[Any]) -> list[RawRecord]:
        return [RawRecord("t", 0, i, None, orjson.dumps(v)) for i, v in enumerate(values)]

    events, rejected = decode_events(records(GOOD_EVENTS), 4, 0.0)
    assert len(events) == len(GOOD_EVENTS) and rejected == []
    assert all(valid("event", v) for v in GOOD_EVENTS)
    events, rejected = decode_events(records(BAD_EVENTS), 4, 0.0)
    assert len(events) == 0 and len(rejected) == len(BAD_EVENTS)
    assert [v for v in BAD_EVENTS if valid("event", v)] == []

    labels, rejected = decode_labels(records(GOOD_LABELS), "classification", 2)
    assert len(labels) == len(GOOD_LABELS) and rejected == [] and all(valid("label", v) for v in GOOD_LABELS)
    labels, rejected = decode_labels(records(BAD_LABELS), "classification", 2)
    assert len(labels) == 0 and [v for v in BAD_LABELS if valid("label", v)] == []


def test_predictions_are_closed_and_classification_predictions_are_class_indices() -> None:
    assert valid("prediction", {"id": "e", "prediction": 1, "scores": [0.2, 0.8], "model_version": 3})
    assert valid("prediction", {"id": "e", "prediction": -1.5, "model_version": 0, "ts": 2.0})
    assert not valid("prediction", {"id": "e", "prediction": 0.5, "scores": [0.2, 0.8], "model_version": 3})
    assert not valid("prediction", {"id": "e", "prediction": 1, "model_version": 3, "extra": 1})
    assert not valid("prediction", {"id": "e", "prediction": 1, "model_version": -1})
    assert valid("prediction", {"id": "e", "prediction": 1, "model_version": 3, "model_generation": 2})
    assert not valid("prediction", {"id": "e", "prediction": 1, "model_version": 3, "model_generation": 0})
    assert not valid("prediction", {"id": "e", "prediction": 1, "scores": [1.2, -0.2], "model_version": 0})


def readme_section(title: str) -> str:
    text = (ROOT / "docs" / "contract.md").read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def test_the_readme_shows_the_schema_files_and_valid_examples() -> None:
    blocks = [orjson.loads(b) for b in re.findall(r"```json\n(.*?)\n```", readme_section("Record schemas"), re.S)]
    shown = {b["$id"]: b for b in blocks if "$schema" in b}
    assert shown == {schema(k)["$id"]: schema(k) for k in KINDS}, "README schemas must be the files in schemas/"
    examples = [b for b in blocks if "$schema" not in b]
    assert {kind_of(e) for e in examples} == set(KINDS)
    for example in examples:
        assert valid(kind_of(example), example), example


def test_the_contract_examples_in_the_readme_are_valid() -> None:
    spans = re.findall(r"`(\{\"id\".*?\})`", readme_section("The contract"))
    examples = [orjson.loads(s.replace(", ...", "")) for s in spans]
    assert {kind_of(e) for e in examples} == set(KINDS), spans
    for example in examples:
        assert valid(kind_of(example), example), example
