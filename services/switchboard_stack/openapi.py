"""The OpenAPI document of every HTTP route the edge serves, generated from the
protos' google.api.http rules (the same rules the transcoder follows), with
each RPC's comment as its description. Written to deploy/console/openapi.json
and served at /openapi.json, with a page at /docs.

    PYTHONPATH=services:gen .venv/bin/python -m switchboard_stack.openapi          # write
    PYTHONPATH=services:gen .venv/bin/python -m switchboard_stack.openapi --check  # fail if stale
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2

from switchboard.common.v1 import access_pb2

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "deploy" / "console" / "openapi.json"
TEMPLATE = REPO / "deploy" / "envoy" / "envoy.yaml.tmpl"
HTTPBODY = "google.api.HttpBody"
# proto3 JSON (the transcoder's printer): 64-bit integers are strings.
_SCALARS: dict[int, dict[str, Any]] = {
    descriptor_pb2.FieldDescriptorProto.TYPE_DOUBLE: {"type": "number"},
    descriptor_pb2.FieldDescriptorProto.TYPE_FLOAT: {"type": "number"},
    descriptor_pb2.FieldDescriptorProto.TYPE_INT32: {"type": "integer", "format": "int32"},
    descriptor_pb2.FieldDescriptorProto.TYPE_SINT32: {"type": "integer", "format": "int32"},
    descriptor_pb2.FieldDescriptorProto.TYPE_SFIXED32: {"type": "integer", "format": "int32"},
    descriptor_pb2.FieldDescriptorProto.TYPE_UINT32: {"type": "integer", "minimum": 0},
    descriptor_pb2.FieldDescriptorProto.TYPE_FIXED32: {"type": "integer", "minimum": 0},
    descriptor_pb2.FieldDescriptorProto.TYPE_INT64: {"type": "string", "format": "int64"},
    descriptor_pb2.FieldDescriptorProto.TYPE_SINT64: {"type": "string", "format": "int64"},
    descriptor_pb2.FieldDescriptorProto.TYPE_SFIXED64: {"type": "string", "format": "int64"},
    descriptor_pb2.FieldDescriptorProto.TYPE_UINT64: {"type": "string", "format": "uint64"},
    descriptor_pb2.FieldDescriptorProto.TYPE_FIXED64: {"type": "string", "format": "uint64"},
    descriptor_pb2.FieldDescriptorProto.TYPE_BOOL: {"type": "boolean"},
    descriptor_pb2.FieldDescriptorProto.TYPE_STRING: {"type": "string"},
    descriptor_pb2.FieldDescriptorProto.TYPE_BYTES: {"type": "string", "format": "byte"},
}
_WELL_KNOWN: dict[str, dict[str, Any]] = {
    "google.protobuf.Value": {},
    "google.protobuf.Struct": {"type": "object"},
    "google.protobuf.ListValue": {"type": "array", "items": {}},
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string", "example": "60s"},
    "google.protobuf.FieldMask": {"type": "string", "example": "a,b.c"},
    "google.protobuf.Any": {"type": "object"},
}
_ACCESS = {
    access_pb2.ACCESS_PUBLIC: "public",
    access_pb2.ACCESS_CLIENT: "client key",
    access_pb2.ACCESS_ADMIN: "admin key",
}


def edge_services() -> list[str]:
    """The services the edge transcodes, as its template lists them."""
    text = TEMPLATE.read_text()
    block = text[text.index("services:") : text.index("print_options:")]
    return re.findall(r"- (switchboard\.[\w.]+)", block)


def _descriptors() -> descriptor_pb2.FileDescriptorSet:
    """Every proto with its comments (source info, which gen/'s set leaves out)."""
    protos = sorted(str(p.relative_to(REPO / "protos")) for p in (REPO / "protos").rglob("*.proto"))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "set.binpb"
        subprocess.run(
            [sys.executable, "-m", "grpc_tools.protoc", "-Iprotos", "--include_imports",
             "--include_source_info", f"--descriptor_set_out={out}", *protos],
            cwd=REPO, check=True,
        )  # fmt: skip
        return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


class _Builder:
    def __init__(self, files: descriptor_pb2.FileDescriptorSet) -> None:
        self.messages: dict[str, descriptor_pb2.DescriptorProto] = {}
        self.enums: dict[str, descriptor_pb2.EnumDescriptorProto] = {}
        self.services: dict[str, tuple[descriptor_pb2.ServiceDescriptorProto, dict[int, str]]] = {}
        self.schemas: dict[str, Any] = {}
        for f in files.file:
            comments = _method_comments(f)
            for i, service in enumerate(f.service):
                self.services[f"{f.package}.{service.name}"] = (
                    service,
                    {j: comments.get((i, j), "") for j in range(len(service.method))},
                )
            for message in f.message_type:
                self._index(f"{f.package}.{message.name}", message)
            for enum in f.enum_type:
                self.enums[f"{f.package}.{enum.name}"] = enum

    def _index(self, name: str, message: descriptor_pb2.DescriptorProto) -> None:
        self.messages[name] = message
        for nested in message.nested_type:
            self._index(f"{name}.{nested.name}", nested)
        for enum in message.enum_type:
            self.enums[f"{name}.{enum.name}"] = enum

    def field(self, f: descriptor_pb2.FieldDescriptorProto) -> dict[str, Any]:
        T = descriptor_pb2.FieldDescriptorProto
        type_name = f.type_name.lstrip(".")
        if f.type == T.TYPE_MESSAGE and self.messages[type_name].options.map_entry:
            entry = self.messages[type_name]
            return {"type": "object", "additionalProperties": self.field(entry.field[1])}
        if f.type == T.TYPE_MESSAGE:
            item = self.ref(type_name)
        elif f.type == T.TYPE_ENUM:
            item = {"type": "string", "enum": [v.name for v in self.enums[type_name].value]}
        else:
            item = dict(_SCALARS[f.type])
        if f.label == T.LABEL_REPEATED:
            return {"type": "array", "items": item}
        return item

    def ref(self, name: str) -> dict[str, Any]:
        if name in _WELL_KNOWN:
            return dict(_WELL_KNOWN[name])
        if name not in self.schemas:
            self.schemas[name] = {}  # placeholder: recursive messages refer to themselves
            message = self.messages[name]
            self.schemas[name] = {
                "type": "object",
                "properties": {f.name: self.field(f) for f in message.field},
            }
        return {"$ref": f"#/components/schemas/{name}"}

    def operation(
        self, service: str, method: descriptor_pb2.MethodDescriptorProto, comment: str,
        verb: str, path: str, body: str,
    ) -> dict[str, Any]:  # fmt: skip
        request = self.messages[method.input_type.lstrip(".")]
        access = method.options.Extensions[access_pb2.access]
        op: dict[str, Any] = {
            "operationId": f"{service.rsplit('.', 1)[-1]}.{method.name}",
            "tags": [service],
            "summary": comment.split("\n\n")[0].replace("\n", " ").strip() or method.name,
            "description": comment.strip(),
            "x-access": _ACCESS.get(access, "undeclared"),
        }
        names = re.findall(r"{([\w.]+)(?:=[^}]*)?}", path)
        params = [
            {"name": n, "in": "path", "required": True, "schema": {"type": "string"}} for n in names
        ]
        if not body:
            params += [
                {"name": f.name, "in": "query", "schema": self.field(f)}
                for f in request.field
                if f.name not in names
                and f.type != descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE
            ]
        if params:
            op["parameters"] = params
        if body:
            if body == "*":
                schema = self.ref(method.input_type.lstrip("."))
            else:
                field = next(f for f in request.field if f.name == body)
                schema = self.field(field)
            if field_type(request, body) == HTTPBODY:
                content = {"multipart/form-data": {"schema": {"type": "object"}}}
            else:
                content = {"application/json": {"schema": schema}}
            op["requestBody"] = {"required": True, "content": content}
        output = method.output_type.lstrip(".")
        answer: dict[str, Any]
        if output == HTTPBODY:
            answer = {"application/json": {}, "text/event-stream": {}}
        else:
            answer = {"application/json": {"schema": self.ref(output)}}
        op["responses"] = {"200": {"description": "OK", "content": answer}}
        return op


def field_type(message: descriptor_pb2.DescriptorProto, name: str) -> str:
    return next((f.type_name.lstrip(".") for f in message.field if f.name == name), "")


def _method_comments(f: descriptor_pb2.FileDescriptorProto) -> dict[tuple[int, int], str]:
    out = {}
    for location in f.source_code_info.location:
        path = list(location.path)
        # 6 = FileDescriptorProto.service, 2 = ServiceDescriptorProto.method
        if len(path) == 4 and path[0] == 6 and path[2] == 2:
            text = "\n".join(
                line.strip()
                for line in location.leading_comments.splitlines()
                if not line.strip().startswith("buf:lint")
            )
            out[(path[1], path[3])] = text.strip()
    return out


def _rules(rule: http_pb2.HttpRule) -> list[http_pb2.HttpRule]:
    return [rule, *rule.additional_bindings]


def document() -> dict[str, Any]:
    builder = _Builder(_descriptors())
    paths: dict[str, dict[str, Any]] = {}
    for service_name in edge_services():
        service, comments = builder.services[service_name]
        for j, method in enumerate(service.method):
            if not method.options.HasExtension(annotations_pb2.http):
                continue
            for rule in _rules(method.options.Extensions[annotations_pb2.http]):
                verb = rule.WhichOneof("pattern")
                assert verb is not None
                template = getattr(rule, verb)
                path = re.sub(r"{([\w.]+)=[^}]*}", r"{\1}", template)
                op = builder.operation(service_name, method, comments[j], verb, template, rule.body)
                paths.setdefault(path, {})[verb] = op
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Switchboard",
            "version": "0.1.0",
            "description": "Every HTTP route of the Switchboard edge, generated from the protos "
            "(google.api.http). Keys: Authorization: Bearer <key> or X-API-Key.",
        },
        "paths": dict(sorted(paths.items())),
        "components": {"schemas": dict(sorted(builder.schemas.items()))},
    }


def render() -> str:
    return json.dumps(document(), indent=1, ensure_ascii=False, sort_keys=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="fail if the file is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not OUT.is_file() or OUT.read_text() != text:
            print(f"{OUT} is stale: python -m switchboard_stack.openapi", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
