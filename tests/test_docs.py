"""The README says what the code does: its generated tables are current, and its config reference
names every field the config model accepts."""

from __future__ import annotations

import re
import typing

from pydantic import BaseModel

from service.core.config import ModelConfig
from service.docs import README, rendered

TEXT = README.read_text()


def test_generated_tables_are_current():
    assert rendered(TEXT) == TEXT, "the README's generated tables are stale: run `make docs`"


def _models_in(annotation) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def config_field_names(model: type[BaseModel] = ModelConfig) -> set[str]:
    names = set()
    for name, field in model.model_fields.items():
        names.add(name)
        for nested in _models_in(field.annotation):
            names |= config_field_names(nested)
    return names


def test_config_reference_documents_every_field():
    block = re.search(r"### config.yaml reference.*?```yaml\n(.*?)```", TEXT, re.S).group(1)
    written = set(re.findall(r"([a-z_][a-z0-9_]*):", block))
    missing = sorted(config_field_names() - written)
    assert not missing, f"README's config.yaml reference lacks {missing}"
