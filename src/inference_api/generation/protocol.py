"""What every front-end takes to constrain an answer: OpenAI's `response_format` (text, json_object,
json_schema), plus `regex`, `choice` and `grammar` (Lark, or GBNF) as further types, mapped onto the grammar the
engine enforces row by row."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, model_validator

from inference_api.engine.grammar import GrammarSpec

_MAX_GRAMMAR_CHARACTERS = 100_000


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    name: StrictStr | None = Field(default=None, max_length=64)
    description: StrictStr | None = None
    json_schema: dict[str, Any] = Field(alias="schema", description="The JSON Schema the output must match.")
    strict: StrictBool | None = Field(default=None, description="Accepted; the schema is always enforced.")


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text", "json_object", "json_schema", "regex", "choice", "grammar"]
    json_schema: JsonSchemaFormat | None = None
    regex: StrictStr | None = Field(default=None, max_length=_MAX_GRAMMAR_CHARACTERS)
    choices: list[StrictStr] | None = Field(default=None, min_length=1, max_length=1000)
    grammar: StrictStr | None = Field(default=None, max_length=_MAX_GRAMMAR_CHARACTERS)

    @model_validator(mode="after")
    def _has_its_field(self) -> ResponseFormat:
        needed = {"json_schema": self.json_schema, "regex": self.regex, "choice": self.choices, "grammar": self.grammar}
        if self.type in needed and needed[self.type] is None:
            field = "choices" if self.type == "choice" else self.type
            raise ValueError(f"type {self.type!r} needs the field {field!r}")
        return self

    def spec(self) -> GrammarSpec | None:
        if self.type == "text":
            return None
        if self.type == "json_object":
            return GrammarSpec("json_object")
        if self.type == "json_schema":
            assert self.json_schema is not None
            return GrammarSpec.json_schema(self.json_schema.json_schema)
        if self.type == "regex":
            return GrammarSpec("regex", self.regex or "")
        if self.type == "choice":
            return GrammarSpec.choice(self.choices or [])
        return GrammarSpec("grammar", self.grammar or "")
