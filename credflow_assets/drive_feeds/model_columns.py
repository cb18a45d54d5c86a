"""The columns of each feed's model (name, type, nullability, description), read without importing
pandas or pandera.

Every process that loads the code location builds the feeds' table assets, whose column schema
the UI shows; a run of any flow starts by loading it. Importing pandas and pandera for that costs
about 80 MB and 0.4–3 s in each such process (bench/RESULTS.md §1, §7), though only a feed's own
run validates rows. So the columns come from `model_columns.json`, a digest of `schemas.py`
committed beside it, and pandera is imported where rows are validated.

`schemas.py` stays the one source of truth: the digest records the sha256 of the `schemas.py`
it was made from, and when the file has changed since, the columns are read from the models
themselves (correct, only slower), so an edited model is never shown or checked with stale
columns. `make model-columns` writes the digest again; a test fails while it is out of date.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

SCHEMAS_FILE = Path(__file__).with_name("schemas.py")
DIGEST_FILE = Path(__file__).with_name("model_columns.json")
REFRESH_COMMAND = "make model-columns"


@dataclass(frozen=True)
class ModelColumn:
    name: str
    kind: str  # text | datetime | integer | float | boolean (a feed's date format refines datetime)
    nullable: bool
    description: str | None


class UnknownSchemaError(LookupError):
    """A feed names a model that schemas.py does not define."""


def model_columns(schema_name: str, digest_file: Path = DIGEST_FILE) -> list[ModelColumn]:
    """The columns of the DataFrameModel called `schema_name`, in the model's order."""
    models = _digested_models(digest_file)
    if models is None or schema_name not in models:  # a model the digest cannot know of
        return columns_from_model(schema_name)
    return [ModelColumn(**column) for column in models[schema_name]]


def columns_from_model(schema_name: str) -> list[ModelColumn]:
    """The columns read from the model itself (imports pandera)."""
    from credflow_assets.drive_feeds.schemas import schema_model

    model = schema_model(schema_name)
    return [ModelColumn(name, column_kind(column.dtype), bool(column.nullable), column.description)
            for name, column in model.to_schema().columns.items()]


def digest_text() -> str:
    """What `model_columns.json` should hold for the current schemas.py."""
    from credflow_assets.drive_feeds.schemas import available_models

    models = {name: [asdict(column) for column in columns_from_model(name)]
              for name in available_models()}
    return json.dumps({"schemas_sha256": _schemas_sha256(), "refresh": REFRESH_COMMAND,
                       "models": models}, indent=2) + "\n"


def write_digest() -> Path:
    DIGEST_FILE.write_text(digest_text())
    return DIGEST_FILE


def column_kind(dtype) -> str:
    text = str(dtype).lower()
    if "datetime" in text or text == "date":
        return "datetime"
    if "int" in text:
        return "integer"
    if "float" in text:
        return "float"
    if "bool" in text:
        return "boolean"
    return "text"


@functools.cache
def _digested_models(digest_file: Path) -> dict[str, list[dict]] | None:
    """The digest's models, or None when it is missing or was made from another schemas.py."""
    try:
        digest = json.loads(digest_file.read_text())
    except (OSError, ValueError):
        return None
    if digest.get("schemas_sha256") != _schemas_sha256():
        return None
    return digest.get("models")


def _schemas_sha256() -> str:
    return hashlib.sha256(SCHEMAS_FILE.read_bytes()).hexdigest()


def unknown_model_message(name: str, known: list[str]) -> str:
    return (f"{name!r} is not a DataFrameModel in credflow_assets/drive_feeds/schemas.py "
            f"(models: {', '.join(known)})")
