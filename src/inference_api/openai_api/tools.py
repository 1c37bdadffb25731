"""Tool calling on /v1/chat/completions: the tools into the prompt, the output constrained or parsed into calls.

`required` and a named function constrain the output with a grammar (a JSON schema), so a call's arguments always
parse: for a named function, its `parameters`; for `required`, `{"name": ..., "arguments": ...}` for any of the
tools (anyOf), or a list of them when parallel calls are allowed. `auto` constrains nothing: the model sees the
tools and a reply that is a call in that same shape is returned as one. The bundled model's chat template has no
tool format of its own, so tools, calls and results are rendered as plain messages.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr

from inference_api.engine.grammar import GrammarSpec

_NAME = r"^[A-Za-z0-9_-]{1,64}$"


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: StrictStr = Field(pattern=_NAME)
    description: StrictStr | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    def parameters_schema(self) -> dict[str, Any]:
        return self.parameters or {"type": "object"}


class Tool(BaseModel):
    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(BaseModel):
    name: StrictStr


class NamedToolChoice(BaseModel):
    type: Literal["function"]
    function: FunctionName


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class FunctionCall(BaseModel):
    name: StrictStr
    arguments: StrictStr


class ToolCall(BaseModel):
    id: StrictStr
    type: Literal["function"] = "function"
    function: FunctionCall


@dataclass(frozen=True)
class ToolPlan:
    """How one request uses its tools: what the prompt says, what constrains the output, how it is read back."""

    tools: list[Tool]
    mode: Literal["auto", "required", "named"]
    parallel: bool
    named: str | None = None

    def system_text(self) -> str:
        listed = "\n".join(
            json.dumps(
                {
                    "name": t.function.name,
                    "description": t.function.description,
                    "parameters": t.function.parameters_schema(),
                }
            )
            for t in self.tools
        )
        shape = '{"name": <function name>, "arguments": <arguments object>}'
        many = " or a JSON list of such calls" if self.parallel else ""
        return (
            f"You can call these functions:\n{listed}\nTo call one, reply with only the JSON {shape}{many}."
            " Otherwise reply normally."
        )

    def grammar(self) -> GrammarSpec | None:
        if self.mode == "named":
            tool = next(t for t in self.tools if t.function.name == self.named)
            return GrammarSpec.json_schema(tool.function.parameters_schema())
        if self.mode == "auto":
            return None
        calls = [
            {
                "type": "object",
                "properties": {"name": {"enum": [t.function.name]}, "arguments": t.function.parameters_schema()},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
            for t in self.tools
        ]
        one: dict[str, Any] = calls[0] if len(calls) == 1 else {"anyOf": calls}
        schema = {"type": "array", "items": one, "minItems": 1} if self.parallel else one
        return GrammarSpec.json_schema(schema)

    def calls(self, text: str) -> list[ToolCall] | None:
        """The output as calls; None when it is not one (`auto`: the model answered in text)."""
        if self.mode == "named":
            assert self.named is not None
            return [_call(self.named, _arguments(text))] if _parses(text) else None
        try:
            value = json.loads(text)
        except ValueError:
            return None
        items = value if isinstance(value, list) else [value]
        names = {t.function.name for t in self.tools}
        found = []
        for item in items:
            if not isinstance(item, dict) or item.get("name") not in names:
                return None
            arguments = item.get("arguments", item.get("parameters", {}))
            found.append(_call(str(item["name"]), json.dumps(arguments)))
        return found or None


def plan(tools: list[Tool] | None, choice: ToolChoice | None, parallel: bool) -> ToolPlan | None:
    """None: no tools in play (none given, or tool_choice "none")."""
    if not tools or choice == "none":
        return None
    if isinstance(choice, NamedToolChoice):
        return ToolPlan(tools, "named", False, choice.function.name)
    return ToolPlan(tools, "required" if choice == "required" else "auto", parallel)


def _parses(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _arguments(text: str) -> str:
    return json.dumps(json.loads(text))


def _call(name: str, arguments: str) -> ToolCall:
    return ToolCall(id=f"call_{uuid.uuid4().hex[:24]}", function=FunctionCall(name=name, arguments=arguments))
