"""required-labels-py: a Portcullis validating policy written in Python,
built into a WebAssembly component with componentize-py.

Equivalent to policies/required-labels, with presence-only labels:
  settings: {"labels": ["app", "team"]}
An object (CREATE or UPDATE) that lacks one of the listed keys in
metadata.labels is denied with
  missing required label: team            (one)
  missing required labels: app, team      (several, in settings order)
Anything else is allowed. DELETE (no object) and CONNECT are allowed.

Contract: wit/policy.wit, world `admission-policy` (portcullis:policy@0.1.0).
Functions whose WIT result is `result<T, string>` return T for `ok` and
raise `componentize_py_types.Err("message")` for `err`.
"""

import json

from componentize_py_types import Err

from wit_world import exports
from wit_world.imports import host
from wit_world.imports.types import LogLevel, Mutation, PolicyMetadata, Verdict

NAME = "required-labels-py"


def _describe(value):
    if value is None:
        return "null"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, bool):
        return f"boolean {json.dumps(value)}"
    if isinstance(value, (int, float)):
        return f"number {json.dumps(value)}"
    return f"string {json.dumps(value)}"


def parse_settings(text):
    """Returns the list of required label keys, or raises Err(message)."""
    try:
        settings = json.loads(text)
    except ValueError as error:
        raise Err(f"invalid settings: not JSON: {error}")
    if not isinstance(settings, dict):
        raise Err('invalid settings: expected an object like {"labels": ["app"]}')
    for key in settings:
        if key != "labels":
            raise Err(f"invalid settings: unknown field `{key}`, expected `labels`")
    if "labels" not in settings:
        raise Err('invalid settings: missing field `labels` (a list of label keys, e.g. ["app", "team"])')
    labels = settings["labels"]
    if not isinstance(labels, list):
        raise Err(f"invalid settings: `labels` must be a list of strings, got {_describe(labels)}")
    if not labels:
        raise Err("labels must name at least one required label")
    seen = set()
    for index, label in enumerate(labels):
        if not isinstance(label, str):
            raise Err(f"invalid settings: labels[{index}] must be a string, got {_describe(label)}")
        if label == "":
            raise Err(f"invalid settings: labels[{index}] is empty")
        if label in seen:
            raise Err(f"invalid settings: label {json.dumps(label)} is listed twice")
        seen.add(label)
    return labels


def _verdict(allowed, message=None):
    return Verdict(allowed=allowed, message=message, code=None, warnings=[], audit_annotations=[])


class Policy(exports.Policy):
    def metadata(self) -> PolicyMetadata:
        return PolicyMetadata(
            name=NAME, version="0.1.0", validates=True, mutates=False, resources=["*"]
        )

    def validate_settings(self, settings: str) -> None:
        parse_settings(settings)

    def validate(self, request: str, settings: str) -> Verdict:
        labels = parse_settings(settings)
        try:
            review = json.loads(request)
        except ValueError as error:
            raise Err(f"the request is not JSON: {error}")
        if not isinstance(review, dict) or review.get("operation") not in ("CREATE", "UPDATE"):
            return _verdict(True)
        obj = review.get("object")
        if not isinstance(obj, dict):
            return _verdict(True)
        metadata = obj.get("metadata")
        present = metadata.get("labels") if isinstance(metadata, dict) else None
        if not isinstance(present, dict):
            present = {}
        missing = [key for key in labels if not isinstance(present.get(key), str)]
        if not missing:
            return _verdict(True)
        if len(missing) == 1:
            message = f"missing required label: {missing[0]}"
        else:
            message = f"missing required labels: {', '.join(missing)}"
        name = metadata.get("name", "") if isinstance(metadata, dict) else ""
        host.log(LogLevel.DEBUG, f"denying {obj.get('kind', 'object')} {name}: {message}")
        return _verdict(False, message)

    def mutate(self, request: str, settings: str) -> Mutation:
        raise Err("this policy does not mutate")
