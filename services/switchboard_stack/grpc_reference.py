"""Render the gRPC reference (docs/grpc-reference.md) from the descriptor set
that `make gen` writes (gen/switchboard.binpb, with the protos' comments).

    python -m switchboard_stack.grpc_reference          # rewrite the file
    python -m switchboard_stack.grpc_reference --check  # exit 1 if it is stale

Every service, RPC, message and enum of the switchboard.* packages, with the
protos' own comments, each RPC's access policy and HTTP route. The protos stay
the one source: tests/unit/test_grpc_reference.py fails when the committed file
differs from what this renders.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# Imported for their side effect too: the option extensions must be registered
# before the descriptor set is parsed, or they stay unknown fields.
from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2

from switchboard.common.v1 import access_pb2

REPO = Path(__file__).resolve().parents[2]
DESCRIPTORS = REPO / "gen" / "switchboard.binpb"
REFERENCE = REPO / "docs" / "grpc-reference.md"
PREFIX = "switchboard."
ROUTER = "switchboard.router."

# SourceCodeInfo paths: the field numbers of FileDescriptorProto and friends.
_MESSAGE, _ENUM, _SERVICE, _PACKAGE = 4, 5, 6, 2
_FIELD, _NESTED, _NESTED_ENUM, _ONEOF = 2, 3, 4, 8
_ENUM_VALUE, _METHOD = 2, 2

_SCALARS = {
    descriptor_pb2.FieldDescriptorProto.TYPE_DOUBLE: "double",
    descriptor_pb2.FieldDescriptorProto.TYPE_FLOAT: "float",
    descriptor_pb2.FieldDescriptorProto.TYPE_INT64: "int64",
    descriptor_pb2.FieldDescriptorProto.TYPE_UINT64: "uint64",
    descriptor_pb2.FieldDescriptorProto.TYPE_INT32: "int32",
    descriptor_pb2.FieldDescriptorProto.TYPE_FIXED64: "fixed64",
    descriptor_pb2.FieldDescriptorProto.TYPE_FIXED32: "fixed32",
    descriptor_pb2.FieldDescriptorProto.TYPE_BOOL: "bool",
    descriptor_pb2.FieldDescriptorProto.TYPE_STRING: "string",
    descriptor_pb2.FieldDescriptorProto.TYPE_BYTES: "bytes",
    descriptor_pb2.FieldDescriptorProto.TYPE_UINT32: "uint32",
    descriptor_pb2.FieldDescriptorProto.TYPE_SFIXED32: "sfixed32",
    descriptor_pb2.FieldDescriptorProto.TYPE_SFIXED64: "sfixed64",
    descriptor_pb2.FieldDescriptorProto.TYPE_SINT32: "sint32",
    descriptor_pb2.FieldDescriptorProto.TYPE_SINT64: "sint64",
}


@dataclass
class _File:
    proto: descriptor_pb2.FileDescriptorProto
    comments: dict[tuple[int, ...], str]

    def comment(self, *path: int) -> str:
        return self.comments.get(path, "")


def load(path: Path = DESCRIPTORS) -> list[_File]:
    files = descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes()).file
    out = []
    # The router first: it is the front door; then by file name.
    for proto in sorted(files, key=lambda f: (not f.package.startswith(ROUTER), f.name)):
        if not proto.package.startswith(PREFIX):
            continue
        comments = {
            tuple(loc.path): _clean(loc.leading_comments)
            for loc in proto.source_code_info.location
            if loc.leading_comments.strip()
        }
        out.append(_File(proto, comments))
    return out


def _clean(comment: str) -> str:
    lines = [line.strip() for line in comment.strip().splitlines()]
    # buf lint directives are for the linter, not for readers.
    return "\n".join(line for line in lines if not line.startswith("buf:lint:"))


def _anchor(full_name: str) -> str:
    return full_name.lstrip(".").replace(".", "-").lower()


def _link(type_name: str) -> str:
    name = type_name.lstrip(".")
    if name.startswith(PREFIX):
        return f"[{name.rsplit('.', 1)[-1]}](#{_anchor(name)})"
    return f"`{name}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _access(method: descriptor_pb2.MethodDescriptorProto) -> str:
    if not method.options.HasExtension(access_pb2.access):
        return "—"
    value = method.options.Extensions[access_pb2.access]
    return access_pb2.Access.Name(value).removeprefix("ACCESS_")


def _route(method: descriptor_pb2.MethodDescriptorProto) -> str:
    if not method.options.HasExtension(annotations_pb2.http):
        return "—"
    rule: http_pb2.HttpRule = method.options.Extensions[annotations_pb2.http]
    kind = rule.WhichOneof("pattern")
    if kind is None or kind == "custom":
        return "—"
    return f"`{kind.upper()} {getattr(rule, kind)}`"


def _field_type(field: descriptor_pb2.FieldDescriptorProto, maps: dict[str, str]) -> str:
    if field.type_name:
        name = field.type_name.lstrip(".")
        if name in maps:
            return maps[name]
        return _link(field.type_name)
    return f"`{_SCALARS[field.type]}`"


def _label(
    field: descriptor_pb2.FieldDescriptorProto, message: descriptor_pb2.DescriptorProto
) -> str:
    if field.type_name.lstrip(".").endswith("Entry") and field.label == field.LABEL_REPEATED:
        nested = field.type_name.rsplit(".", 1)[-1]
        if any(n.name == nested and n.options.map_entry for n in message.nested_type):
            return "map"
    if field.label == field.LABEL_REPEATED:
        return "repeated"
    if field.proto3_optional:
        return "optional"
    if field.HasField("oneof_index"):
        return f"oneof `{message.oneof_decl[field.oneof_index].name}`"
    return ""


def _services(file: _File) -> Iterator[str]:
    package = file.proto.package
    if file.proto.service and (text := file.comment(_PACKAGE)):
        yield f"*{file.proto.name}*\n\n{text}\n"
    for si, service in enumerate(file.proto.service):
        full = f"{package}.{service.name}"
        yield f'<a id="{_anchor(full)}"></a>\n\n### {full}\n'
        if text := file.comment(_SERVICE, si):
            yield text + "\n"
        yield "| RPC | request | response | access | HTTP |"
        yield "|---|---|---|---|---|"
        for method in service.method:
            request = ("stream " if method.client_streaming else "") + _link(method.input_type)
            response = ("stream " if method.server_streaming else "") + _link(method.output_type)
            yield (
                f"| [{method.name}](#{_anchor(full + '.' + method.name)}) | {request} | "
                f"{response} | {_access(method)} | {_route(method)} |"
            )
        yield ""
        for mi, method in enumerate(service.method):
            yield f'<a id="{_anchor(full + "." + method.name)}"></a>\n\n#### {method.name}\n'
            if text := file.comment(_SERVICE, si, _METHOD, mi):
                yield text + "\n"


def _messages(
    file: _File,
    messages: list[descriptor_pb2.DescriptorProto],
    scope: str,
    path: tuple[int, ...],
) -> Iterator[str]:
    for mi, message in enumerate(messages):
        if message.options.map_entry:
            continue
        here = (*path, mi)
        full = f"{scope}.{message.name}"
        maps = {
            f"{full}.{n.name}": (
                f"map<{_field_type(n.field[0], {})}, {_field_type(n.field[1], {})}>"
            )
            for n in message.nested_type
            if n.options.map_entry
        }
        yield f'<a id="{_anchor(full)}"></a>\n\n### {full}\n'
        if text := file.comment(*here):
            yield text + "\n"
        if message.field:
            yield "| field | type | label | description |"
            yield "|---|---|---|---|"
            for fi, field in enumerate(message.field):
                text = _cell(file.comment(*here, _FIELD, fi))
                yield (
                    f"| `{field.name}` = {field.number} | {_field_type(field, maps)} | "
                    f"{_label(field, message)} | {text} |"
                )
            yield ""
        else:
            yield "(no fields)\n"
        for oi, oneof in enumerate(message.oneof_decl):
            if text := file.comment(*here, _ONEOF, oi):
                yield f"oneof `{oneof.name}`: " + text.replace("\n", " ") + "\n"
        yield from _messages(file, list(message.nested_type), full, (*here, _NESTED))
        yield from _enums(file, list(message.enum_type), full, (*here, _NESTED_ENUM))


def _enums(
    file: _File,
    enums: list[descriptor_pb2.EnumDescriptorProto],
    scope: str,
    path: tuple[int, ...],
) -> Iterator[str]:
    for ei, enum in enumerate(enums):
        here = (*path, ei)
        full = f"{scope}.{enum.name}"
        yield f'<a id="{_anchor(full)}"></a>\n\n### {full} (enum)\n'
        if text := file.comment(*here):
            yield text + "\n"
        yield "| value | number | description |"
        yield "|---|---|---|"
        for vi, value in enumerate(enum.value):
            text = _cell(file.comment(*here, _ENUM_VALUE, vi))
            yield f"| `{value.name}` | {value.number} | {text} |"
        yield ""


def render(files: list[_File]) -> str:
    out = [
        "# Switchboard gRPC reference",
        "",
        "Generated from the protos' descriptors (`gen/switchboard.binpb`) by "
        "`python -m switchboard_stack.grpc_reference`; do not edit by hand "
        "(`tests/unit/test_grpc_reference.py` fails when it is stale). How to call "
        'the API, errors, deadlines and metadata: README.md, "gRPC".',
        "",
        "Access: who may call the RPC (`switchboard.common.v1.access`): PUBLIC anyone, "
        "CLIENT a client key, ADMIN the admin key, INTERNAL service to service only; "
        "— where the proto does not declare it yet. HTTP: the edge's route to it, if any.",
        "",
        "## Services",
        "",
    ]
    for file in files:
        out.extend(_services(file))
    out += ["## Messages and enums", ""]
    for file in files:
        out.append(f"<!-- {file.proto.name} -->\n")
        if not file.proto.service and (text := file.comment(_PACKAGE)):
            out.append(f"*{file.proto.name}*\n\n{text}\n")
        scope = file.proto.package
        out.extend(_messages(file, list(file.proto.message_type), scope, (_MESSAGE,)))
        out.extend(_enums(file, list(file.proto.enum_type), scope, (_ENUM,)))
    return "\n".join(out).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    args = parser.parse_args(argv)
    text = render(load())
    if args.check:
        if not REFERENCE.exists() or REFERENCE.read_text() != text:
            print(f"{REFERENCE.relative_to(REPO)} is stale: run python -m {__spec__.name}")
            return 1
        return 0
    REFERENCE.parent.mkdir(exist_ok=True)
    REFERENCE.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
