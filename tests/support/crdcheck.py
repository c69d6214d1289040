"""Check a CustomResourceDefinition the way kube-apiserver does before it accepts one.

Every rule here is transcribed from the Kubernetes sources (v1.30-v1.32 era, `kubernetes/kubernetes`,
`staging/src/k8s.io/`), cited beside it; the messages use the server's own wording and field paths, so a
test can compare what this returns with what a real cluster printed. The sources:

- `apiextensions-apiserver/pkg/apis/apiextensions/validation/validation.go` (VALIDATION below):
  `ValidateCustomResourceDefinition` and what it calls: names, group, scope, versions, printer columns,
  subresources, `ValidateCustomResourceDefinitionOpenAPISchema` (unsupported keywords, the
  `x-kubernetes-*` extensions, list/map types, `x-kubernetes-validations`), `validateMapListKeysMapSet`.
- `apiextensions-apiserver/pkg/apiserver/schema/validation.go` (STRUCTURAL below): `ValidateStructural`,
  `validateStructuralInvariants`, `validateStructuralMetadataInvariants`, `validateNestedValueValidation`;
  `schema/complete.go`: `validateStructuralCompleteness`; `schema/convert.go`: `NewStructural`.
- `apiextensions-apiserver/pkg/apiserver/schema/defaulting/validation.go` (DEFAULTS below): defaults
  must validate and survive pruning; `schema/pruning/algorithm.go`: `Prune`.
- `apiextensions-apiserver/pkg/apis/apiextensions/v1/conversion.go`:
  `Convert_v1_CustomResourceDefinitionSpec_To_apiextensions_CustomResourceDefinitionSpec` moves a schema
  (and subresources, printer columns) that every version shares to the top level before validation. That
  is why a one-version v1 CRD is reported as `spec.validation.openAPIV3Schema...`, not
  `spec.versions[0].schema.openAPIV3Schema...`.
- `apimachinery/pkg/util/validation/field/errors.go` (`Error`, `ErrorBody`, `ErrorList.ToAggregate`),
  `apimachinery/pkg/util/errors/errors.go` (`aggregate.Error`), `apimachinery/pkg/api/errors/errors.go`
  (`NewInvalid`): how the errors become the 422 `Status` a client receives.

Not modelled (documented gaps, none of which Graft's or KubeRay's CRDs exercise): CEL type checking beyond
"the fields a rule selects on `self`/`oldSelf` exist" (cel-python parses, it does not type-check), CEL cost
estimation (`StaticEstimatedCostLimit`), conversion webhooks beyond the strategy name, `selectableFields`,
ObjectMeta label/annotation syntax, the API-approval annotation of `*.k8s.io` groups, default values inside
embedded-resource metadata, and the exact wording of value-validation messages for defaults (kube-openapi's,
approximated). Go's regexp (RE2) and Python's `re` differ at the edges, so `pattern` checking is Python's.
Where the real server puts a Go struct dump in a message (`%#v` of a schema or version list) this module
writes an abbreviated `Type{...}`.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from typing import Any

# ------------------------------------------------------------------------------ errors and messages

#: field.ErrorType values (apimachinery/pkg/util/validation/field/errors.go) and their String().
_TYPE_TEXT = {
    "FieldValueNotFound": "Not found",
    "FieldValueRequired": "Required value",
    "FieldValueDuplicate": "Duplicate value",
    "FieldValueInvalid": "Invalid value",
    "FieldValueNotSupported": "Unsupported value",
    "FieldValueForbidden": "Forbidden",
    "FieldValueTooLong": "Too long",
    "FieldValueTooMany": "Too many",
    "InternalError": "Internal error",
    "FieldValueTypeInvalid": "Invalid value",
}
_OMIT = object()


class GoStruct(str):
    """A value Go would print with %#v as a struct dump; we print an abbreviated `Type{...}`."""


def go_value(value: Any, top: bool = True) -> str:
    """A value as field.Error's ErrorBody prints it: %q for strings, %v for numbers and bools, %#v else."""
    if isinstance(value, GoStruct):
        return str(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e21 else repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        if all(isinstance(v, str) for v in value) and top:
            return "[]string{" + ", ".join(json.dumps(v) for v in value) + "}"
        return "[]interface {}{" + ", ".join(go_value(v, False) for v in value) + "}"
    if isinstance(value, dict):
        items = ", ".join(f"{json.dumps(k)}:{go_value(v, False)}" for k, v in sorted(value.items()))
        return "map[string]interface {}{" + items + "}"
    return repr(value)


@dataclass(frozen=True)
class FieldError:
    """One field.Error: `str()` is its Error(), `body()` its ErrorBody() (the cause's message)."""

    type: str
    field: str
    bad_value: Any = field(default=_OMIT, compare=False)
    detail: str = ""

    def body(self) -> str:
        # field/errors.go ErrorBody: Required, Forbidden, TooLong and Internal print no value.
        text = _TYPE_TEXT[self.type]
        if self.type not in ("FieldValueRequired", "FieldValueForbidden", "FieldValueTooLong", "InternalError") \
                and self.bad_value is not _OMIT:
            text += f": {go_value(self.bad_value)}"
        if self.detail:
            text += f": {self.detail}"
        return text

    def __str__(self) -> str:
        return f"{self.field}: {self.body()}"


def _required(path: str, detail: str = "") -> FieldError:
    return FieldError("FieldValueRequired", path, "", detail)


def _invalid(path: str, value: Any, detail: str) -> FieldError:
    return FieldError("FieldValueInvalid", path, value, detail)


def _type_invalid(path: str, value: Any, detail: str) -> FieldError:
    return FieldError("FieldValueTypeInvalid", path, value, detail)


def _forbidden(path: str, detail: str) -> FieldError:
    return FieldError("FieldValueForbidden", path, "", detail)


def _not_supported(path: str, value: Any, valid: list[str]) -> FieldError:
    # field.NotSupported quotes each valid value (strconv.Quote) and joins them with ", ".
    detail = "supported values: " + ", ".join(json.dumps(v) for v in valid) if valid else ""
    return FieldError("FieldValueNotSupported", path, value, detail)


def _too_long(path: str, value: Any, max_length: int) -> FieldError:
    return FieldError("FieldValueTooLong", path, value, f"may not be longer than {max_length}")


def _too_many(path: str, actual: int, max_items: int) -> FieldError:
    return FieldError("FieldValueTooMany", path, actual, f"must have at most {max_items} items")


def aggregate(errors: list[FieldError]) -> str:
    """ErrorList.ToAggregate().Error(): duplicates dropped; one error as is, several as `[a, b]`."""
    seen: list[str] = []
    for e in errors:
        if str(e) not in seen:
            seen.append(str(e))
    return seen[0] if len(seen) == 1 else "[" + ", ".join(seen) + "]"


def invalid_status(name: str, errors: list[FieldError], kind: str = "CustomResourceDefinition",
                   group: str = "apiextensions.k8s.io") -> dict[str, Any]:
    """The 422 Status `errors.NewInvalid` builds (apimachinery/pkg/api/errors/errors.go)."""
    qualified = f"{kind}.{group}" if group else kind
    return {
        "apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure", "code": 422, "reason": "Invalid",
        "message": f"{qualified} {json.dumps(name)} is invalid: {aggregate(errors)}",
        "details": {"name": name, "group": group, "kind": kind,
                    "causes": [{"reason": e.type, "message": e.body(), "field": e.field} for e in errors]},
    }


def kubectl_message(status: dict[str, Any]) -> str:
    """What `kubectl` prints for an Invalid Status (kubectl/pkg/cmd/util/helpers.go `checkErr`,
    `statusCausesToAggrError`, `MultilineError`): one cause on the line, several as `* ` lines."""
    details = status.get("details") or {}
    head = f"The {details.get('kind', '')} {json.dumps(details.get('name', ''))} is invalid"
    causes: list[str] = []
    for c in details.get("causes") or []:
        line = f"{c.get('field', '')}: {c.get('message', '')}"
        if line not in causes:
            causes.append(line)
    if not causes:
        return head
    if len(causes) == 1:
        return f"{head}: {causes[0]}"
    return f"{head}: \n" + "".join(f"* {c}\n" for c in causes).rstrip("\n")


# ---------------------------------------------------------------------------------------- paths


def _child(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _key(path: str, key: str) -> str:
    return f"{path}[{key}]"


def _index(path: str, i: int) -> str:
    return f"{path}[{i}]"


# ------------------------------------------------------------------------------- name validators
# apimachinery/pkg/util/validation/validation.go: IsDNS1123Subdomain, IsDNS1035Label, RegexError.

_DNS1123_LABEL = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN = _DNS1123_LABEL + "(\\." + _DNS1123_LABEL + ")*"
_DNS1035_LABEL = "[a-z]([-a-z0-9]*[a-z0-9])?"


def _regex_error(msg: str, fmt: str, *examples: str) -> str:
    if not examples:
        return f"{msg} (regex used for validation is '{fmt}')"
    msg += " (e.g. "
    for i, ex in enumerate(examples):
        if i > 0:
            msg += " or "
        msg += f"'{ex}', "
    return msg + f"regex used for validation is '{fmt}')"


def is_dns1123_subdomain(value: str) -> list[str]:
    errs = []
    if len(value) > 253:
        errs.append("must be no more than 253 characters")
    if not re.fullmatch(_DNS1123_SUBDOMAIN, value):
        errs.append(_regex_error("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, "
                                 "'-' or '.', and must start and end with an alphanumeric character",
                                 _DNS1123_SUBDOMAIN, "example.com"))
    return errs


def is_dns1035_label(value: str) -> list[str]:
    errs = []
    if len(value) > 63:
        errs.append("must be no more than 63 characters")
    if not re.fullmatch(_DNS1035_LABEL, value):
        errs.append(_regex_error("a DNS-1035 label must consist of lower case alphanumeric characters or '-', start "
                                 "with an alphabetic character, and end with an alphanumeric character",
                                 _DNS1035_LABEL, "my-name", "abc-123"))
    return errs


# ------------------------------------------------------------------------------ schema helpers

_OPENAPI_TYPES = ["array", "boolean", "integer", "number", "object", "string"]  # sets.NewString(...).List()
_META_FIELDS = ("metadata", "kind", "apiVersion")


def _t(s: dict[str, Any]) -> str:
    t = s.get("type", "")
    return t if isinstance(t, str) else ""


def _ap(s: dict[str, Any]) -> tuple[bool, dict[str, Any] | None, bool]:
    """additionalProperties as (present, schema, allows)."""
    ap = s.get("additionalProperties")
    if ap is None:
        return False, None, False
    if isinstance(ap, bool):
        return True, None, ap
    return True, ap if isinstance(ap, dict) else None, True


def _items(s: dict[str, Any]) -> dict[str, Any] | None:
    it = s.get("items")
    return it if isinstance(it, dict) else None


def _props(s: dict[str, Any]) -> dict[str, dict[str, Any]]:
    p = s.get("properties")
    return p if isinstance(p, dict) else {}


def _rules(s: dict[str, Any]) -> list[dict[str, Any]]:
    r = s.get("x-kubernetes-validations")
    return r if isinstance(r, list) else []


def prune(obj: Any, schema: dict[str, Any] | None, root: bool = False) -> Any:
    """A pruned copy of `obj` (schema/pruning/algorithm.go `Prune`): fields the structural schema does not
    specify are dropped; TypeMeta/ObjectMeta are kept at the root and in embedded resources."""
    if root:
        schema = {**(schema or {}), "x-kubernetes-embedded-resource": True}
    obj = copy.deepcopy(obj)
    _prune(obj, schema)
    return obj


def _prune(x: Any, s: dict[str, Any] | None) -> None:
    if s is not None and s.get("x-kubernetes-preserve-unknown-fields"):
        _skip_prune(x, s)
        return
    if isinstance(x, dict):
        if s is None:
            x.clear()
            return
        has_ap, ap_schema, _ = _ap(s)
        for k in list(x):
            if s.get("x-kubernetes-embedded-resource") and k in _META_FIELDS:
                continue
            if k in _props(s):
                _prune(x[k], _props(s)[k])
            elif has_ap:
                _prune(x[k], ap_schema)
            else:
                del x[k]
    elif isinstance(x, list):
        for v in x:
            _prune(v, None if s is None else _items(s))


def _skip_prune(x: Any, s: dict[str, Any] | None) -> None:
    if s is None:
        return
    if isinstance(x, dict):
        has_ap, ap_schema, _ = _ap(s)
        for k, v in x.items():
            if s.get("x-kubernetes-embedded-resource") and k in _META_FIELDS:
                continue
            if k in _props(s):
                _prune(v, _props(s)[k])
            elif has_ap:
                _prune(v, ap_schema)
    elif isinstance(x, list):
        for v in x:
            _skip_prune(v, _items(s))


def apply_defaults(obj: Any, schema: dict[str, Any] | None) -> Any:
    """A copy of `obj` defaulted as the API server defaults a custom resource on every decode
    (customresource_handler.go unstructuredDefaulter): first non-nullable nulls without a default are dropped
    (schema/defaulting/prunenulls.go `PruneNonNullableNullsWithoutDefaults`), then missing fields and
    non-nullable nulls get the schema's `default` (schema/defaulting/algorithm.go `Default`)."""
    obj = copy.deepcopy(obj)
    _prune_nulls(obj, schema)
    _default(obj, schema)
    return obj


def _field_schema(key: str, s: dict[str, Any] | None) -> dict[str, Any] | None:
    if s is None:
        return None
    if key in _props(s):
        return _props(s)[key]
    has_ap, ap_schema, _ = _ap(s)
    return ap_schema if has_ap else None


def _prune_nulls(x: Any, s: dict[str, Any] | None) -> None:
    if isinstance(x, dict):
        for k in list(x):
            sub = _field_schema(k, s)
            if x[k] is None and sub is not None and not sub.get("nullable") and "default" not in sub:
                del x[k]
            else:
                _prune_nulls(x[k], sub)
    elif isinstance(x, list):
        for v in x:
            _prune_nulls(v, None if s is None else _items(s))


def _non_nullable_null(x: Any, s: dict[str, Any] | None) -> bool:
    return x is None and s is not None and not s.get("nullable")


def _default(x: Any, s: dict[str, Any] | None) -> None:
    if s is None:
        return
    if isinstance(x, dict):
        for k, prop in _props(s).items():
            if prop.get("default") is None:
                continue
            if k not in x or _non_nullable_null(x[k], prop):
                x[k] = copy.deepcopy(prop["default"])
        has_ap, ap_schema, _ = _ap(s)
        for k in list(x):
            if k in _props(s):
                _default(x[k], _props(s)[k])
            elif has_ap:
                if _non_nullable_null(x[k], ap_schema) and ap_schema is not None:
                    x[k] = copy.deepcopy(ap_schema.get("default"))
                _default(x[k], ap_schema)
    elif isinstance(x, list):
        items = _items(s)
        for i in range(len(x)):
            if _non_nullable_null(x[i], items) and items is not None:
                x[i] = copy.deepcopy(items.get("default"))
            _default(x[i], items)


# ------------------------------------------------------------------------- STRUCTURAL invariants
# schema/validation.go. Levels as there: rootLevel, itemLevel, fieldLevel.

_ROOT, _ITEM, _FIELD = "root", "item", "field"
_INT_OR_STRING_ANYOF = [{"type": "integer"}, {"type": "string"}]
#: The JSONSchemaProps keys that make up a Structural's ValueValidation (schema/convert.go newValueValidation).
_VALUE_VALIDATION = ("format", "maximum", "exclusiveMaximum", "minimum", "exclusiveMinimum", "maxLength", "minLength",
                     "pattern", "maxItems", "minItems", "uniqueItems", "multipleOf", "maxProperties", "minProperties",
                     "required", "enum", "allOf", "anyOf", "oneOf", "not")


def _go_set(value: Any) -> bool:
    """Whether a decoded JSONSchemaProps field differs from Go's zero value: false and "" are zero, a missing
    key is a nil pointer/slice/map; anything else present (0 behind a pointer, an empty non-nil list) is set."""
    if value is None or value is False:
        return False
    return value != "" if isinstance(value, str) else True


def _structural_set(s: dict[str, Any], key: str) -> bool:
    """_go_set for a Structural built by NewStructural (schema/convert.go), which rebuilds enum, allOf, anyOf and
    oneOf by appending (so an empty list becomes nil) and keeps properties only when there are some."""
    value = s.get(key)
    if key in ("enum", "allOf", "anyOf", "oneOf", "properties") and not value:
        return False
    return _go_set(value)


def validate_structural(s: dict[str, Any], path: str) -> list[FieldError]:
    """ValidateStructural (schema/validation.go): invariants plus completeness, sorted by message."""
    errs = _structural_invariants(s, _ROOT, path) + _structural_completeness(s, path)
    return sorted(errs, key=str)


def _structural_invariants(s: dict[str, Any] | None, lvl: str, path: str) -> list[FieldError]:
    # schema/validation.go validateStructuralInvariants
    if s is None:
        return []
    errs: list[FieldError] = []
    typ = _t(s)
    if typ == "array" and _items(s) is None:
        errs.append(_required(_child(path, "items"), "must be specified"))
    errs += _structural_invariants(_items(s), _ITEM, _child(path, "items"))
    for k, v in _props(s).items():
        errs += _structural_invariants(v, _FIELD, _key(_child(path, "properties"), k))
    has_ap, ap_schema, _ = _ap(s)
    if has_ap:
        if lvl == _ROOT:
            errs.append(_forbidden(_child(path, "additionalProperties"), "must not be used at the root"))
        if ap_schema is not None:
            errs += _structural_invariants(ap_schema, _FIELD, _child(path, "additionalProperties"))
    # validateExtensions
    ios, puf, emb = (bool(s.get("x-kubernetes-int-or-string")), bool(s.get("x-kubernetes-preserve-unknown-fields")),
                     bool(s.get("x-kubernetes-embedded-resource")))
    if ios and puf:
        errs.append(_invalid(_child(path, "x-kubernetes-preserve-unknown-fields"), True,
                             "must be false if x-kubernetes-int-or-string is true"))
    if ios and emb:
        errs.append(_invalid(_child(path, "x-kubernetes-embedded-resource"), True,
                             "must be false if x-kubernetes-int-or-string is true"))
    # the two int-or-string exceptions: anyOf [integer, string], or allOf whose first entry is that anyOf
    skip_any_of = s.get("anyOf") == _INT_OR_STRING_ANYOF
    all_of = s.get("allOf") if isinstance(s.get("allOf"), list) else []
    skip_first_all_of_any_of = bool(all_of) and isinstance(all_of[0], dict) and \
        all_of[0].get("anyOf") == _INT_OR_STRING_ANYOF
    errs += _value_validation(s, skip_any_of, skip_first_all_of_any_of, lvl, path)
    check_metadata = lvl == _ROOT or emb
    if emb and typ != "object":
        if not typ:
            errs.append(_required(_child(path, "type"), "must be object if x-kubernetes-embedded-resource is true"))
        else:
            errs.append(_invalid(_child(path, "type"), typ, "must be object if x-kubernetes-embedded-resource is true"))
    elif not typ and not ios and not puf:
        detail = {_ROOT: "must not be empty at the root", _ITEM: "must not be empty for specified array items",
                  _FIELD: "must not be empty for specified object fields"}[lvl]
        errs.append(_required(_child(path, "type"), detail))
    if emb and has_ap:
        errs.append(_forbidden(_child(path, "additionalProperties"),
                               "must not be used if x-kubernetes-embedded-resource is set"))
    if lvl == _ROOT and typ and typ != "object":
        errs.append(_invalid(_child(path, "type"), typ, "must be object at the root"))
    props = _props(s)
    for name in ("kind", "apiVersion"):
        if name in props and check_metadata and _t(props[name]) != "string":
            errs.append(_invalid(_child(_key(_child(path, "properties"), name), "type"), _t(props[name]),
                                 "must be string"))
    if "metadata" in props:
        errs += _structural_metadata(props["metadata"], check_metadata, lvl,
                                     _key(_child(path, "properties"), "metadata"))
    if emb and not puf and not props:
        errs.append(_required(_child(path, "properties"), "must not be empty if x-kubernetes-embedded-resource is "
                                                          "true without x-kubernetes-preserve-unknown-fields"))
    return errs


#: Every JSONSchemaProps key NewStructural keeps (schema/convert.go); `example` and `externalDocs` are dropped.
_STRUCTURAL_KEYS = ("type", "description", "title", "default", "nullable", "additionalProperties", "items",
                    "properties", *_VALUE_VALIDATION, "x-kubernetes-preserve-unknown-fields",
                    "x-kubernetes-embedded-resource", "x-kubernetes-int-or-string", "x-kubernetes-list-map-keys",
                    "x-kubernetes-list-type", "x-kubernetes-map-type", "x-kubernetes-validations")


def _structural_metadata(s: dict[str, Any], check_metadata: bool, lvl: str, path: str) -> list[FieldError]:
    # schema/validation.go validateStructuralMetadataInvariants
    errs = []
    if check_metadata and _t(s) != "object":
        errs.append(_invalid(_child(path, "type"), _t(s), "must be object"))
    if lvl == _ROOT:
        # Only properties.name and properties.generateName may restrict anything; type and default are checked
        # elsewhere; anything else left over means metadata is "implicitly specified".
        rest = {k: v for k, v in s.items() if k in _STRUCTURAL_KEYS and k not in ("type", "default")}
        props = _props(s)
        if props and set(props) <= {"name", "generateName"}:
            rest.pop("properties", None)
        if any(_structural_set(rest, k) for k in rest):
            errs.append(_forbidden(path, "must not specify anything other than name and generateName, but metadata "
                                         "is implicitly specified"))
    return errs


def _value_validation(s: dict[str, Any], skip_any_of: bool, skip_first_all_of_any_of: bool, lvl: str, path: str,
                      allow_nested_x_validations: bool = False) -> list[FieldError]:
    # schema/validation.go validateValueValidation
    errs: list[FieldError] = []
    if not skip_any_of:
        for i, v in enumerate(s.get("anyOf") or []):
            errs += _nested_value_validation(v, False, lvl, _index(_child(path, "anyOf"), i))
    for i, v in enumerate(s.get("allOf") or []):
        errs += _nested_value_validation(v, skip_first_all_of_any_of and i == 0, lvl, _index(_child(path, "allOf"), i))
    for i, v in enumerate(s.get("oneOf") or []):
        errs += _nested_value_validation(v, False, lvl, _index(_child(path, "oneOf"), i))
    if isinstance(s.get("not"), dict):
        errs += _nested_value_validation(s["not"], False, lvl, _child(path, "not"))
    pattern = s.get("pattern")
    if pattern:
        try:
            re.compile(pattern)
        except re.error as e:
            errs.append(_invalid(_child(path, "pattern"), pattern,
                                 f"must be a valid regular expression, but isn't: {e}"))
    return errs


def _nested_value_validation(v: Any, skip_any_of: bool, lvl: str, path: str) -> list[FieldError]:
    # schema/validation.go validateNestedValueValidation: inside anyOf/allOf/oneOf/not only value validation.
    if not isinstance(v, dict):
        return []
    errs = _value_validation(v, skip_any_of, False, lvl, path)
    if isinstance(v.get("items"), dict):
        errs += _nested_value_validation(v["items"], False, lvl, _child(path, "items"))
    for k, p in _props(v).items():
        errs += _nested_value_validation(p, False, _FIELD, _key(_child(path, "properties"), k))
    if _t(v):
        errs.append(_forbidden(_child(path, "type"), "must be empty to be structural"))
    if "additionalProperties" in v:
        errs.append(_forbidden(_child(path, "additionalProperties"), "must be undefined to be structural"))
    for key, text in (("default", "must be undefined to be structural"), ("title", "must be empty to be structural"),
                      ("description", "must be empty to be structural"), ("nullable", "must be false to be structural"),
                      ("externalDocs", "must be undefined to be structural"),
                      ("x-kubernetes-preserve-unknown-fields", "must be false to be structural"),
                      ("x-kubernetes-embedded-resource", "must be false to be structural"),
                      ("x-kubernetes-int-or-string", "must be false to be structural"),
                      ("x-kubernetes-list-map-keys", "must be empty to be structural"),
                      ("x-kubernetes-list-type", "must be undefined to be structural"),
                      ("x-kubernetes-map-type", "must be undefined to be structural"),
                      ("x-kubernetes-validations", "must be empty to be structural")):
        if v.get(key) not in (None, False, "", []):
            errs.append(_forbidden(_child(path, key), text))
    if "metadata" in _props(v):
        errs.append(_forbidden(_key(_child(path, "properties"), "metadata"),
                               "must not be specified in a nested context"))
    return errs


def _structural_completeness(s: dict[str, Any], path: str) -> list[FieldError]:
    # schema/complete.go validateStructuralCompleteness: what anyOf/allOf/oneOf/not name must exist outside them.
    return _value_validation_completeness(s, s, path, path)


def _value_validation_completeness(v: dict[str, Any], s: dict[str, Any] | None, s_path: str, v_path: str
                                   ) -> list[FieldError]:
    if s is None:
        return [_required(s_path, f"because it is defined in {v_path}")]
    errs: list[FieldError] = []
    if isinstance(v.get("not"), dict):
        errs += _nested_completeness(v["not"], s, s_path, _child(v_path, "not"))
    for key in ("allOf", "anyOf", "oneOf"):
        for i, x in enumerate(v.get(key) or []):
            errs += _nested_completeness(x, s, s_path, _index(_child(v_path, key), i))
    return errs


def _nested_completeness(v: Any, s: dict[str, Any] | None, s_path: str, v_path: str) -> list[FieldError]:
    if not isinstance(v, dict):
        return []
    if s is None:
        return [_required(s_path, f"because it is defined in {v_path}")]
    errs = _value_validation_completeness(v, s, s_path, v_path)
    if isinstance(v.get("items"), dict):
        errs += _nested_completeness(v["items"], _items(s), _child(s_path, "items"), _child(v_path, "items"))
    for k, vf in _props(v).items():
        props = _props(s)
        if k not in props:
            errs.append(_required(_key(_child(s_path, "properties"), k),
                                  f"because it is defined in {_key(_child(v_path, 'properties'), k)}"))
        else:
            errs += _nested_completeness(vf, props[k], _key(_child(s_path, "properties"), k),
                                         _key(_child(v_path, "properties"), k))
    return errs


def _new_structural_error(s: Any) -> str | None:
    # schema/convert.go NewStructural / validateUnsupportedFields: what cannot become a Structural at all.
    if not isinstance(s, dict):
        return None
    for key, name in (("id", "id"), ("$schema", "schema"), ("$ref", "$ref"), ("patternProperties", "patternProperties"),
                      ("dependencies", "dependencies"), ("additionalItems", "additionalItems"),
                      ("definitions", "definitions")):
        if s.get(key):
            return f"OpenAPIV3Schema '{name}' is not supported"
    if isinstance(s.get("items"), list) and s["items"]:
        return "OpenAPIV3Schema 'items' must be a schema, but is an array"
    if s.get("x-kubernetes-preserve-unknown-fields") is False:
        return "internal error: 'x-kubernetes-preserve-unknown-fields' must be true or undefined"
    subs = [s.get("items"), s.get("not"), *(s.get("allOf") or []), *(s.get("anyOf") or []), *(s.get("oneOf") or []),
            *_props(s).values()]
    if isinstance(s.get("additionalProperties"), dict):
        subs.append(s["additionalProperties"])
    for sub in subs:
        err = _new_structural_error(sub)
        if err:
            return err
    return None


# -------------------------------------------------------------------------------------- DEFAULTS

def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


#: kube-openapi's messages (pkg/validation/errors/schema.go) by JSON Schema keyword; `%s in body` leads each.
_OPENAPI_MESSAGES = {
    "minLength": "should be at least {} chars long", "pattern": "should match '{}'",
    "multipleOf": "should be a multiple of {}", "maximum": "should be less than or equal to {}",
    "minimum": "should be greater than or equal to {}", "uniqueItems": "shouldn't contain duplicates",
    "minItems": "should have at least {} items", "maxProperties": "should have at most {} properties",
    "minProperties": "should have at least {} properties",
}


def _value_errors(value: Any, schema: dict[str, Any], path: str) -> list[FieldError]:
    """ValidateCustomResource (apiserver/validation/validation.go kubeOpenAPIResultToFieldErrors): the
    schema's value validations on `value`, as field errors under `path`. jsonschema stands in for
    kube-openapi; the codes map to field errors as there (required, enum, type, maxLength, maxItems), the
    rest are Invalid with kube-openapi's message."""
    import jsonschema

    from support.kube.schema import jsonschema_for

    validator = jsonschema.Draft4Validator(jsonschema_for(schema, strict_fields=False))
    errs: list[FieldError] = []
    for e in sorted(validator.iter_errors(value), key=lambda e: [str(p) for p in e.absolute_path]):
        name = ".".join(str(p) for p in e.absolute_path)
        err_path = _child(path, name) if name else path
        if e.validator == "required":
            missing = re.search(r"'([^']+)' is a required property", e.message)
            errs.append(_required(_child(err_path, missing.group(1) if missing else "")))
        elif e.validator == "enum":
            errs.append(_not_supported(err_path, e.instance, [v if isinstance(v, str) else json.dumps(v)
                                                              for v in e.validator_value if v is not None]))
        elif e.validator == "type":
            want = e.validator_value if isinstance(e.validator_value, str) else ",".join(e.validator_value)
            actual = _json_type(e.instance)
            errs.append(_type_invalid(err_path, actual, f"{name} in body must be of type {want}: {json.dumps(actual)}"))
        elif e.validator == "maxLength":
            errs.append(_too_long(err_path, e.instance, e.validator_value))
        elif e.validator == "maxItems":
            errs.append(_too_many(err_path, len(e.instance), e.validator_value))
        else:
            bound = e.validator_value
            if e.validator in ("maximum", "minimum") and (e.schema or {}).get(f"exclusive{e.validator.title()}"):
                text = f"should be {'less' if e.validator == 'maximum' else 'greater'} than {go_value(bound)}"
            else:
                text = _OPENAPI_MESSAGES.get(e.validator, e.message).format(go_value(bound) if not isinstance(
                    bound, str) else bound)
            errs.append(_invalid(err_path, e.instance, f"{name} in body {text}"))
    return errs


def _validate_defaults(s: dict[str, Any], path: str, inside_meta: bool = False) -> list[FieldError]:
    # defaulting/validation.go validate: a default must survive pruning, pass the schema and its CEL rules
    # (the CEL check arrived with the ctx-taking ValidateDefaults; it evaluates with oldSelf = the default).
    errs: list[FieldError] = []
    if s.get("x-kubernetes-embedded-resource"):
        inside_meta = False
    if "default" in s and not inside_meta:
        default = s["default"]
        pruned = prune(default, s, root=bool(s.get("x-kubernetes-embedded-resource")))
        if pruned != default:
            errs.append(_invalid(_child(path, "default"), default, "must not have unknown fields"))
        else:
            found = _value_errors(default, s, _child(path, "default"))
            if not found:
                from support.cel import cel_violations

                for where, message in cel_violations(s, default, "", old=default):
                    where_path = _child(path, "default") + ("" if where == "(root)" else "." + where)
                    found.append(_invalid(where_path, _t(s), message))
            errs += found
    # do not follow additionalProperties because defaults are forbidden there (inside resource meta) or
    # the pruning of a default there is ambiguous
    if _items(s) is not None:
        errs += _validate_defaults(_items(s), _child(path, "items"), inside_meta)
    for k, sub in _props(s).items():
        sub_meta = inside_meta or (bool(s.get("x-kubernetes-embedded-resource")) and k in _META_FIELDS)
        errs += _validate_defaults(sub, _key(_child(path, "properties"), k), sub_meta)
    return errs


# ------------------------------------------------------------------ VALIDATION: the OpenAPI schema


@dataclass(frozen=True)
class _SSV:
    """specStandardValidatorV3 and its derived copies."""

    allow_defaults: bool = True
    disallow_defaults_reason: str = ""
    inside_resource_meta: bool = False
    uncorrelatable_old_self_path: str | None = None

    def forbid_defaults(self, reason: str) -> _SSV:
        return _SSV(False, reason, self.inside_resource_meta, self.uncorrelatable_old_self_path)

    def with_inside_meta(self) -> _SSV:
        return _SSV(self.allow_defaults, self.disallow_defaults_reason, True, self.uncorrelatable_old_self_path)

    def forbid_old_self(self, path: str) -> _SSV:
        if self.uncorrelatable_old_self_path is not None:
            return self
        return _SSV(self.allow_defaults, self.disallow_defaults_reason, self.inside_resource_meta, path)


def _ssv_validate(ssv: _SSV, s: dict[str, Any], path: str) -> list[FieldError]:
    # validation.go (*specStandardValidatorV3).validate
    errs = []
    typ = s.get("type")
    if typ and typ not in _OPENAPI_TYPES:
        errs.append(_not_supported(_child(path, "type"), typ, _OPENAPI_TYPES))
    if "default" in s and not ssv.allow_defaults:
        detail = "must not be set" + (f" {ssv.disallow_defaults_reason}" if ssv.disallow_defaults_reason else "")
        errs.append(_forbidden(_child(path, "default"), detail))
    if s.get("id"):
        errs.append(_forbidden(_child(path, "id"), "id is not supported"))
    if "additionalItems" in s:
        errs.append(_forbidden(_child(path, "additionalItems"), "additionalItems is not supported"))
    if s.get("patternProperties"):
        errs.append(_forbidden(_child(path, "patternProperties"), "patternProperties is not supported"))
    if s.get("definitions"):
        errs.append(_forbidden(_child(path, "definitions"), "definitions is not supported"))
    if "dependencies" in s:
        errs.append(_forbidden(_child(path, "dependencies"), "dependencies is not supported"))
    if "$ref" in s:
        errs.append(_forbidden(_child(path, "$ref"), "$ref is not supported"))
    if typ == "null":
        errs.append(_forbidden(_child(path, "type"), "type cannot be set to null, use nullable as an alternative"))
    if isinstance(s.get("items"), list) and s["items"]:
        errs.append(_forbidden(_child(path, "items"), "items must be a schema object and not an array"))
    if ssv.inside_resource_meta and s.get("x-kubernetes-embedded-resource"):
        errs.append(_forbidden(_child(path, "x-kubernetes-embedded-resource"),
                               "must not be used inside of resource meta"))
    return errs


@dataclass
class _Errs:
    schema: list[FieldError] = field(default_factory=list)
    cel: list[FieldError] = field(default_factory=list)

    def extend(self, other: _Errs) -> None:
        self.schema += other.schema
        self.cel += other.cel


def _map_is_correlatable(map_type: Any) -> bool:
    # apiserver/schema/cel/model (cel.MapIsCorrelatable): granular (the default) and atomic maps correlate.
    return map_type in (None, "granular", "atomic")


def _openapi_schema(s: Any, path: str, ssv: _SSV, is_root: bool, cel: bool) -> _Errs:
    """ValidateCustomResourceDefinitionOpenAPISchema (VALIDATION). `cel` stands for a non-nil celContext:
    rules are compiled only when the schema is otherwise structural and valid."""
    out = _Errs()
    if not isinstance(s, dict):
        return out
    out.schema += _ssv_validate(ssv, s, path)
    if s.get("uniqueItems") is True:
        out.schema.append(_forbidden(_child(path, "uniqueItems"), "uniqueItems cannot be set to true since the "
                                     "runtime complexity becomes quadratic"))
    has_ap, ap_schema, allows = _ap(s)
    props = _props(s)
    if has_ap:
        if props and (not allows or ap_schema is not None):
            out.schema.append(_forbidden(_child(path, "additionalProperties"),
                                         "additionalProperties and properties are mutual exclusive"))
        sub = ssv.forbid_defaults("inside additionalProperties applying to object metadata") \
            if ssv.inside_resource_meta else ssv
        out.extend(_openapi_schema(ap_schema, _child(path, "additionalProperties"), sub, False, cel))
    for name in sorted(props):  # Go iterates a map in random order; sorted keeps our output stable
        sub = ssv
        if not _map_is_correlatable(s.get("x-kubernetes-map-type")):
            sub = sub.forbid_old_self(path)
        if (is_root or s.get("x-kubernetes-embedded-resource")) and name in _META_FIELDS:
            sub = sub.with_inside_meta()
            if is_root:
                sub = sub.forbid_defaults(f"in top-level {name}")
        out.extend(_openapi_schema(props[name], _key(_child(path, "properties"), name), sub, False, cel))
    out.extend(_openapi_schema(s.get("not"), _child(path, "not"), ssv, False, False))
    for key in ("allOf", "oneOf", "anyOf"):
        for i, sub_schema in enumerate(s.get(key) or []):
            out.extend(_openapi_schema(sub_schema, _index(_child(path, key), i), ssv, False, False))
    for name, sub_schema in sorted((s.get("definitions") or {}).items()):
        out.extend(_openapi_schema(sub_schema, _key(_child(path, "definitions"), name), ssv, False, False))
    list_type = s.get("x-kubernetes-list-type")
    if "items" in s:
        sub = ssv if list_type == "map" else ssv.forbid_old_self(path)
        if isinstance(s["items"], dict):
            out.extend(_openapi_schema(s["items"], _child(path, "items"), sub, False, cel))
        elif isinstance(s["items"], list):
            for i, item in enumerate(s["items"]):
                out.extend(_openapi_schema(item, _index(_child(path, "items"), i), sub, False, cel))
    for name, dep in sorted((s.get("dependencies") or {}).items()):
        if isinstance(dep, dict):
            out.extend(_openapi_schema(dep, _key(_child(path, "dependencies"), name), ssv, False, False))
    if s.get("x-kubernetes-preserve-unknown-fields") is False:
        out.schema.append(_invalid(_child(path, "x-kubernetes-preserve-unknown-fields"), False,
                                   "must be true or undefined"))
    typ = _t(s)
    map_type = s.get("x-kubernetes-map-type")
    if map_type is not None and typ != "object":
        if not typ:
            out.schema.append(_required(_child(path, "type"), "must be object if x-kubernetes-map-type is specified"))
        else:
            out.schema.append(_invalid(_child(path, "type"), typ,
                                       "must be object if x-kubernetes-map-type is specified"))
    if map_type is not None and map_type not in ("atomic", "granular"):
        out.schema.append(_not_supported(_child(path, "x-kubernetes-map-type"), map_type, ["atomic", "granular"]))
    items = _items(s)
    if list_type is not None and typ != "array":
        if not typ:
            out.schema.append(_required(_child(path, "type"), "must be array if x-kubernetes-list-type is specified"))
        else:
            out.schema.append(_invalid(_child(path, "type"), typ,
                                       "must be array if x-kubernetes-list-type is specified"))
    elif list_type == "set" and items is not None:
        if _t(items) == "array" and items.get("x-kubernetes-list-type") not in (None, "atomic"):
            out.schema.append(_invalid(_child(_child(path, "items"), "x-kubernetes-list-type"),
                                       items.get("x-kubernetes-list-type"),
                                       "must be atomic as item of a list with x-kubernetes-list-type=set"))
        elif _t(items) == "object" and items.get("x-kubernetes-map-type") != "atomic":
            # (sic) the real server reports the items' list type here, not their map type
            out.schema.append(_invalid(_child(_child(path, "items"), "x-kubernetes-map-type"),
                                       items.get("x-kubernetes-list-type"),
                                       "must be atomic as item of a list with x-kubernetes-list-type=set"))
    if list_type is not None and list_type not in ("atomic", "set", "map"):
        out.schema.append(_not_supported(_child(path, "x-kubernetes-list-type"), list_type, ["atomic", "set", "map"]))
    keys = s.get("x-kubernetes-list-map-keys") or []
    if keys:
        if list_type is None:
            out.schema.append(_required(_child(path, "x-kubernetes-list-type"),
                                        "must be map if x-kubernetes-list-map-keys is non-empty"))
        elif list_type != "map":
            out.schema.append(_invalid(_child(path, "x-kubernetes-list-type"), list_type,
                                       "must be map if x-kubernetes-list-map-keys is non-empty"))
    if list_type == "map":
        if not keys:
            out.schema.append(_required(_child(path, "x-kubernetes-list-map-keys"),
                                        "must not be empty if x-kubernetes-list-type is map"))
        if "items" not in s:
            out.schema.append(_required(_child(path, "items"), "must have a schema if x-kubernetes-list-type is map"))
        if isinstance(s.get("items"), list):
            out.schema.append(_invalid(_child(path, "items"), GoStruct("&apiextensions.JSONSchemaPropsOrArray{...}"),
                                       "must only have a single schema if x-kubernetes-list-type is map"))
        if items is not None and _t(items) != "object":
            out.schema.append(_invalid(_child(_child(path, "items"), "type"), _t(items),
                                       "must be object if parent array's x-kubernetes-list-type is map"))
        if items is not None and _t(items) == "object":
            seen: set[str] = set()
            for k in keys:
                if k in _props(items):
                    if _t(_props(items)[k]) in ("array", "object"):
                        # (sic) the real server reports the items' type, not the key's
                        out.schema.append(_invalid(_child(_key(_child(_child(path, "items"), "properties"), k), "type"),
                                                   _t(items),
                                                   "must be a scalar type if parent array's x-kubernetes-list-type is "
                                                   "map"))
                else:
                    out.schema.append(_invalid(_child(path, "x-kubernetes-list-map-keys"), keys,
                                               "entries must all be names of item properties"))
                if k in seen:
                    out.schema.append(_invalid(_child(path, "x-kubernetes-list-map-keys"), keys,
                                               "must not contain duplicate entries"))
                seen.add(k)
    out.schema += _map_list_keys_map_set(s, path)
    out.extend(_validation_rules(s, path, ssv, cel and not out.schema))
    return out


def _map_list_keys_map_set(s: dict[str, Any], path: str) -> list[FieldError]:
    # validation.go validateMapListKeysMapSet (requireMapListKeysMapSetValidation is true on create)
    items, list_type = _items(s), s.get("x-kubernetes-list-type")
    if items is None or list_type not in ("set", "map"):
        return []
    errs = []
    if items.get("nullable"):
        errs.append(_forbidden(_child(_child(path, "items"), "nullable"),
                               f"cannot be nullable when x-kubernetes-list-type is {list_type}"))
    if list_type == "map":
        required = set(items.get("required") or [])
        for k in s.get("x-kubernetes-list-map-keys") or []:
            prop = _props(items).get(k)
            if prop is None:
                continue
            key_path = _key(_child(_child(path, "items"), "properties"), k)
            if k not in required and "default" not in prop:
                errs.append(_required(_child(key_path, "default"), "this property is in x-kubernetes-list-map-keys, so "
                                                                   "it must have a default or be a required property"))
            if prop.get("nullable"):
                errs.append(_forbidden(_child(key_path, "nullable"),
                                       "this property is in x-kubernetes-list-map-keys, so it cannot be nullable"))
    return errs


_SUPPORTED_REASONS = ["FieldValueDuplicate", "FieldValueForbidden", "FieldValueInvalid", "FieldValueRequired"]


def _rule_struct(rule: dict[str, Any]) -> GoStruct:
    """%#v of an apiextensions.ValidationRule, as the real message embeds it."""
    reason = rule.get("reason")
    optional = rule.get("optionalOldSelf")
    return GoStruct(
        "apiextensions.ValidationRule{"
        f"Rule:{json.dumps(rule.get('rule', ''))}, Message:{json.dumps(rule.get('message', ''))}, "
        f"MessageExpression:{json.dumps(rule.get('messageExpression', ''))}, "
        f"Reason:{'(*apiextensions.FieldValueErrorReason)(nil)' if reason is None else '&' + json.dumps(reason)}, "
        f"FieldPath:{json.dumps(rule.get('fieldPath', ''))}, "
        f"OptionalOldSelf:{'(*bool)(nil)' if optional is None else '&' + go_value(optional)}}}")


def _validation_rules(s: dict[str, Any], path: str, ssv: _SSV, compile_cel: bool) -> _Errs:
    # VALIDATION, the x-kubernetes-validations block of ValidateCustomResourceDefinitionOpenAPISchema
    out = _Errs()
    rules = _rules(s)
    if not rules:
        return out
    base = _child(path, "x-kubernetes-validations")
    for i, rule in enumerate(rules):
        rule = rule if isinstance(rule, dict) else {}
        rp = _index(base, i)
        text, msg, msg_expr = str(rule.get("rule", "")), rule.get("message"), rule.get("messageExpression")
        if not text.strip():
            out.schema.append(_required(_child(rp, "rule"), "rule is not specified"))
        elif msg and not str(msg).strip():
            out.schema.append(_invalid(_child(rp, "message"), msg, "message must be non-empty if specified"))
        elif re.search(r"[\n\r]+", str(msg or "").strip()):
            out.schema.append(_invalid(_child(rp, "message"), msg, "message must not contain line breaks"))
        elif re.search(r"[\n\r]+", text.strip()) and not str(msg or "").strip():
            out.schema.append(_required(_child(rp, "message"),
                                        "message must be specified if rule contains line breaks"))
        if msg_expr and not str(msg_expr).strip():
            out.schema.append(_required(_child(rp, "messageExpression"),
                                        "messageExpression must be non-empty if specified"))
        if rule.get("reason") is not None and rule["reason"] not in _SUPPORTED_REASONS:
            out.schema.append(_not_supported(_child(rp, "reason"), rule["reason"], _SUPPORTED_REASONS))
        fp = rule.get("fieldPath")
        if fp is not None and fp != "":
            if not str(fp).strip():
                out.schema.append(_invalid(_child(rp, "fieldPath"), fp, "fieldPath must be non-empty if specified"))
            if re.search(r"[\n\r]+", str(fp)):
                out.schema.append(_invalid(_child(rp, "fieldPath"), fp, "fieldPath must not contain line breaks"))
            if not _field_path_valid(s, str(fp)):
                out.schema.append(_invalid(_child(rp, "fieldPath"), fp, "fieldPath must be a valid path"))
    if out.schema or not compile_cel:
        return out
    for i, rule in enumerate(rules):
        rp = _index(base, i)
        text = str(rule.get("rule", ""))
        problem = _cel_compile_problem(text, s)
        if problem:
            out.cel.append(_invalid(_child(rp, "rule"), _rule_struct(rule), problem))
        if rule.get("messageExpression"):
            problem = _cel_compile_problem(str(rule["messageExpression"]), s)
            if problem:
                out.cel.append(_invalid(_child(rp, "messageExpression"), _rule_struct(rule), problem))
        if _uses_old_self(text):
            if ssv.uncorrelatable_old_self_path is not None:
                out.cel.append(_invalid(_child(rp, "rule"), text,
                                        "oldSelf cannot be used on the uncorrelatable portion of the schema within "
                                        f"{ssv.uncorrelatable_old_self_path}"))
        elif rule.get("optionalOldSelf") is not None:
            out.cel.append(_invalid(_child(rp, "optionalOldSelf"), rule["optionalOldSelf"],
                                    "may not be set if oldSelf is not used in rule"))
    return out


def _field_path_valid(s: dict[str, Any], path: str) -> bool:
    """cel.ValidFieldPath, for the forms it takes: `.a.b`, `.a['b']`, `.list[0]`."""
    tokens = re.findall(r"\.([A-Za-z0-9_\-]+)|\['([^']*)'\]|\[(\d+)\]", path)
    if not path.startswith(".") or "".join(
            f".{a}" if a else (f"['{b}']" if b else f"[{c}]") for a, b, c in tokens) != path:
        return False
    node: dict[str, Any] | None = s
    for name, quoted, index in tokens:
        if node is None:
            return False
        if index:
            node = _items(node)
            continue
        key = name or quoted
        has_ap, ap_schema, _ = _ap(node)
        node = _props(node).get(key) or (ap_schema if has_ap else None)
    return node is not None


# --------------------------------------------------------------------------------- CEL compiling

_CEL_ESCAPES = {"__underscores__": "__", "__dot__": ".", "__dash__": "-", "__slash__": "/"}
_CEL_RESERVED = {"true", "false", "null", "in", "as", "break", "const", "continue", "else", "for", "function", "if",
                 "import", "let", "loop", "package", "namespace", "return", "var", "void", "while"}


def _unescape(name: str) -> str:
    # apiserver/pkg/cel/escaping.go: property names that are not CEL identifiers are escaped
    m = re.fullmatch(r"__([a-z]+)__", name)
    if m and m.group(1) in _CEL_RESERVED:
        return m.group(1)
    for escaped, plain in _CEL_ESCAPES.items():
        name = name.replace(escaped, plain)
    return name


def _uses_old_self(expr: str) -> bool:
    from lark import Token

    try:
        tree = _parse(expr)
    except Exception:
        return "oldSelf" in expr
    return any(str(tok) == "oldSelf" for tok in tree.scan_values(lambda v: isinstance(v, Token)))


def _parse(expr: str) -> Any:
    from support.cel import parse

    return parse(expr)


def _cel_compile_problem(expr: str, s: dict[str, Any]) -> str | None:
    """The compile error a CEL expression gets (cel-go's wording for the two checks cel-python allows: syntax,
    and `self.x` / `oldSelf.x` naming a field the schema does not declare)."""
    import celpy

    try:
        tree = _parse(expr)
    except celpy.CELParseError as e:
        # cel-go adds ANTLR's reason ("mismatched input ..."), which cel-python's parser cannot give
        line, column = getattr(e, "line", 1) or 1, getattr(e, "column", 1) or 1
        snippet = expr.splitlines()[line - 1] if expr.splitlines() else expr
        return (f"compilation failed: ERROR: <input>:{line}:{column}: Syntax error\n | {snippet}\n"
                f" | {'.' * (column - 1)}^")
    for name, offset in _undefined_fields(tree, s, expr):
        line = expr.count("\n", 0, offset) + 1
        column = offset - (expr.rfind("\n", 0, offset) + 1)  # 0-based, in characters (cel-go counts runes)
        snippet = expr.split("\n")[line - 1]
        # cel-go common/errors.go ToDisplayString: `<input>:line:column+1`, then the line and a caret under it
        return (f"compilation failed: ERROR: <input>:{line}:{column + 1}: undefined field '{name}'\n | {snippet}\n"
                f" | {'.' * column}^")
    return None


def _undefined_fields(tree: Any, s: dict[str, Any], expr: str) -> list[tuple[str, int]]:
    """(field, offset) for each `self.x` / `oldSelf.x` naming no field of the schema, at the offset cel-go's checker
    reports: a select is located at its `.`, and `has(self.x)` at the `(` of `has(`. The parser gives a select the
    id of its `op='.'` token and a global call that of its `op='('` (cel-go parser/parser.go, grammar CEL.g4), and
    the has() macro's presence test takes the call's location (parser/helper.go `nextMacroID`), so the server says
    1:31 for `self.type != 'Pretrain' || has(self.dat)`, not 1:36."""
    from lark import Token, Tree

    found: list[tuple[str, int]] = []
    presence = _presence_tests(tree, expr)

    def chain(node: Any) -> tuple[str, list[Token]] | None:
        """`self.a.b` -> ("self", [a, b]); None when the member expression is not a plain selection."""
        if not isinstance(node, Tree):
            return None
        if node.data == "member" and len(node.children) == 1:
            return chain(node.children[0])
        if node.data == "primary" and len(node.children) == 1:
            tok = node.children[0]
            if isinstance(tok, Tree) and tok.data == "ident" and tok.children:
                tok = tok.children[0]
            if isinstance(tok, Token) and str(tok) in ("self", "oldSelf"):
                return str(tok), []
            return None
        if node.data == "member_dot" and len(node.children) == 2:
            inner = chain(node.children[0])
            if inner is None:
                return None
            return inner[0], [*inner[1], node.children[1]]
        return None

    def resolve(names: list[Any], has_at: int | None) -> None:
        node: dict[str, Any] | None = s
        for tok in names:
            if node is None or _t(node) != "object" or node.get("x-kubernetes-preserve-unknown-fields") or \
                    node.get("x-kubernetes-embedded-resource") or _ap(node)[0]:
                return
            props = _props(node)
            name = _unescape(str(tok))
            if name not in props:
                last = tok is names[-1] and has_at is not None
                found.append((str(tok), has_at if last else max(0, expr.rfind(".", 0, tok.start_pos))))
                return
            node = props[name]

    for sub in tree.iter_subtrees():
        if sub.data == "member_dot":
            c = chain(sub)
            if c is not None:
                resolve(c[1], presence.get(id(sub)))
    return sorted(set(found), key=lambda f: f[1])


def _presence_tests(tree: Any, expr: str) -> dict[int, int]:
    """id() of each `has(...)` argument's select -> the offset of that call's `(`."""
    from lark import Token, Tree

    found: dict[int, int] = {}
    for sub in tree.iter_subtrees():
        if sub.data != "ident_arg" or not sub.children or str(sub.children[0]) != "has" or len(sub.children) != 2:
            continue
        name, args = sub.children
        node = args.children[0] if isinstance(args, Tree) and len(args.children) == 1 else None
        while isinstance(node, Tree) and node.data != "member_dot" and len(node.children) == 1:
            node = node.children[0]
        if isinstance(node, Tree) and node.data == "member_dot" and isinstance(name, Token):
            found[id(node)] = expr.find("(", name.end_pos)
    return found


# ------------------------------------------------------------------ VALIDATION: the CRD as a whole

#: JSONSchemaProps fields in struct order, and the JSON keys they come from (for the status root check).
_ROOT_FIELDS = [("ID", "id"), ("Schema", "$schema"), ("Ref", "$ref"), ("Description", "description"),
                ("Type", "type"), ("Format", "format"), ("Title", "title"), ("Default", "default"),
                ("Maximum", "maximum"), ("ExclusiveMaximum", "exclusiveMaximum"), ("Minimum", "minimum"),
                ("ExclusiveMinimum", "exclusiveMinimum"), ("MaxLength", "maxLength"), ("MinLength", "minLength"),
                ("Pattern", "pattern"), ("MaxItems", "maxItems"), ("MinItems", "minItems"),
                ("UniqueItems", "uniqueItems"), ("MultipleOf", "multipleOf"), ("Enum", "enum"),
                ("MaxProperties", "maxProperties"), ("MinProperties", "minProperties"), ("Required", "required"),
                ("Items", "items"), ("AllOf", "allOf"), ("OneOf", "oneOf"), ("AnyOf", "anyOf"), ("Not", "not"),
                ("Properties", "properties"), ("AdditionalProperties", "additionalProperties"),
                ("PatternProperties", "patternProperties"), ("Dependencies", "dependencies"),
                ("AdditionalItems", "additionalItems"), ("Definitions", "definitions"),
                ("ExternalDocs", "externalDocs"), ("Example", "example"), ("Nullable", "nullable"),
                ("XPreserveUnknownFields", "x-kubernetes-preserve-unknown-fields"),
                ("XEmbeddedResource", "x-kubernetes-embedded-resource"),
                ("XIntOrString", "x-kubernetes-int-or-string"), ("XListMapKeys", "x-kubernetes-list-map-keys"),
                ("XListType", "x-kubernetes-list-type"), ("XMapType", "x-kubernetes-map-type"),
                ("XValidations", "x-kubernetes-validations")]
_ALLOWED_AT_ROOT = ["Description", "Type", "Format", "Title", "Maximum", "ExclusiveMaximum", "Minimum",
                    "ExclusiveMinimum", "MaxLength", "MinLength", "Pattern", "MaxItems", "MinItems", "UniqueItems",
                    "MultipleOf", "Required", "Items", "Properties", "ExternalDocs", "Example",
                    "XPreserveUnknownFields", "XValidations"]


def _crd_validation(schema: dict[str, Any] | None, status_enabled: bool, path: str) -> list[FieldError]:
    # validation.go validateCustomResourceDefinitionValidation
    if schema is None:
        return []
    errs: list[FieldError] = []
    if status_enabled:
        for go_name, key in _ROOT_FIELDS:
            if not _go_set(schema.get(key)):
                continue
            if go_name == "Type":
                if schema["type"] != "object":
                    errs.append(_invalid(_child(path, "openAPIV3Schema.type"), schema["type"],
                                         'only "object" is allowed as the type at the root of the schema if the status '
                                         "subresource is enabled"))
                    break
                continue
            if go_name not in _ALLOWED_AT_ROOT:
                allowed = " ".join(_ALLOWED_AT_ROOT)
                errs.append(_invalid(_child(path, "openAPIV3Schema"), GoStruct("apiextensions.JSONSchemaProps{...}"),
                                     f"only [{allowed}] fields are allowed at the root of the schema if the status "
                                     "subresource is enabled"))
                break
    if schema.get("nullable"):
        errs.append(_forbidden(_child(path, "openAPIV3Schema.nullable"), "nullable cannot be true at the root"))
    root_path = _child(path, "openAPIV3Schema")
    init_errs: list[FieldError] = []
    cel = False
    init_error = _new_structural_error(schema)
    if init_error:
        init_errs.append(_invalid(root_path, "", init_error))
    else:
        structural = validate_structural(schema, root_path)
        if structural:
            errs += structural
        else:
            defaults = _validate_defaults({**schema, "x-kubernetes-embedded-resource": True}, root_path)
            if defaults:
                errs += defaults
            else:
                cel = True
    found = _openapi_schema(schema, root_path, _SSV(), True, cel)
    errs += found.schema + found.cel
    if not errs:
        errs += init_errs
    return errs


def _subresources(sub: Any, path: str) -> list[FieldError]:
    # validation.go ValidateCustomResourceDefinitionSubresources
    if not isinstance(sub, dict) or not isinstance(sub.get("scale"), dict):
        return []
    scale, errs = sub["scale"], []
    for key, prefixes, where in (("specReplicasPath", (".spec.",), "under .spec"),
                                 ("statusReplicasPath", (".status.",), "under .status"),
                                 ("labelSelectorPath", (".spec.", ".status."), "under either .spec or .status")):
        value = scale.get(key) or ""
        p = _child(path, f"scale.{key}")
        if not value:
            if key != "labelSelectorPath":
                errs.append(_required(p))
            continue
        simple = _simple_json_path(value, p)
        if simple:
            errs += simple
        elif not value.startswith(prefixes):
            errs.append(_invalid(p, value, f"should be a json path {where}"))
    return errs


def _simple_json_path(s: str, path: str) -> list[FieldError]:
    # validation.go validateSimpleJSONPath
    if not s:
        return [_invalid(path, s, "must not be empty")]
    if s[0] != ".":
        return [_invalid(path, s, "must be a simple json path starting with .")]
    return []


def _printer_column(col: Any, path: str) -> list[FieldError]:
    # validation.go ValidateCustomResourceColumnDefinition
    col = col if isinstance(col, dict) else {}
    errs = []
    types = ["boolean", "date", "integer", "number", "string"]
    formats = ["byte", "date", "date-time", "double", "float", "int32", "int64", "password"]
    if not col.get("name"):
        errs.append(_required(_child(path, "name")))
    if not col.get("type"):
        errs.append(_required(_child(path, "type"), f"must be one of {','.join(types)}"))
    elif col["type"] not in types:
        errs.append(_invalid(_child(path, "type"), col["type"], f"must be one of {','.join(types)}"))
    if col.get("format") and col["format"] not in formats:
        errs.append(_invalid(_child(path, "format"), col["format"], f"must be one of {','.join(formats)}"))
    if not col.get("jsonPath"):
        errs.append(_required(_child(path, "JSONPath")))  # (sic) the Go field name
    else:
        errs += _simple_json_path(col["jsonPath"], _child(path, "JSONPath"))
    return errs


def _names(names: dict[str, Any], path: str) -> list[FieldError]:
    # validation.go ValidateCustomResourceDefinitionNames
    errs = []
    for key in ("plural", "singular"):
        value = names.get(key) or ""
        if value and is_dns1035_label(value):
            errs.append(_invalid(_child(path, key), value, ",".join(is_dns1035_label(value))))
    for key in ("kind", "listKind"):
        value = names.get(key) or ""
        if value and is_dns1035_label(value.lower()):
            errs.append(_invalid(_child(path, key), value, "may have mixed case, but should otherwise match: "
                                 + ",".join(is_dns1035_label(value.lower()))))
    for i, short in enumerate(names.get("shortNames") or []):
        if is_dns1035_label(short):
            errs.append(_invalid(_index(_child(path, "shortNames"), i), short, ",".join(is_dns1035_label(short))))
    if names.get("kind") and names.get("kind") == names.get("listKind"):
        errs.append(_invalid(_child(path, "listKind"), names["listKind"], "kind and listKind may not be the same"))
    for i, cat in enumerate(names.get("categories") or []):
        if is_dns1035_label(cat):
            errs.append(_invalid(_index(_child(path, "categories"), i), cat, ",".join(is_dns1035_label(cat))))
    return errs


def _schema_has(s: Any, pred: Any) -> bool:
    if not isinstance(s, dict):
        return False
    if pred(s):
        return True
    subs = [s.get("items"), s.get("not"), *(s.get("allOf") or []), *(s.get("anyOf") or []), *(s.get("oneOf") or []),
            *_props(s).values(), *(s.get("patternProperties") or {}).values(), *(s.get("definitions") or {}).values()]
    if isinstance(s.get("additionalProperties"), dict):
        subs.append(s["additionalProperties"])
    if isinstance(s.get("items"), list):
        subs += s["items"]
    return any(_schema_has(x, pred) for x in subs)


def check_crd(crd: dict[str, Any]) -> list[FieldError]:
    """The errors kube-apiserver answers a create of this apiextensions.k8s.io/v1 CRD with ([] if accepted).

    validation.go ValidateCustomResourceDefinition, after the v1 defaults (types_jsonschema/defaults.go:
    singular = lower(kind), listKind = kind + "List") and the v1 -> internal conversion."""
    meta = crd.get("metadata") or {}
    spec = copy.deepcopy(crd.get("spec") or {})
    names = spec.setdefault("names", {}) or {}
    if not names.get("singular") and names.get("kind"):
        names["singular"] = names["kind"].lower()
    if not names.get("listKind") and names.get("kind"):
        names["listKind"] = names["kind"] + "List"
    versions = [v if isinstance(v, dict) else {} for v in spec.get("versions") or []]
    errs: list[FieldError] = []

    # ObjectMeta (apimachinery/pkg/api/validation/objectmeta.go ValidateObjectMeta with the CRD's name rule)
    required_name = f"{names.get('plural', '')}.{spec.get('group', '')}"
    if not meta.get("name"):
        errs.append(_required("metadata.name", "name or generateName is required"))
    else:
        msgs = is_dns1123_subdomain(meta["name"])
        if meta["name"] != required_name:
            msgs.append('must be spec.names.plural+"."+spec.group')
        errs += [_invalid("metadata.name", meta["name"], m) for m in msgs]
    if meta.get("namespace"):
        errs.append(_forbidden("metadata.namespace", "not allowed on this type"))

    # v1 -> internal: per-version fields every version shares move to the top level.
    def shared(key: str) -> Any:
        values = [v.get(key) for v in versions]
        if versions and all(json.dumps(x, sort_keys=True) == json.dumps(values[0], sort_keys=True) for x in values):
            return values[0] or None, True
        return None, False

    top_schema, schema_shared = shared("schema")
    top_sub, sub_shared = shared("subresources")
    top_cols, cols_shared = shared("additionalPrinterColumns")

    group = spec.get("group") or ""
    if not group:
        errs.append(_required("spec.group"))
    elif is_dns1123_subdomain(group):
        errs.append(_invalid("spec.group", group, ",".join(is_dns1123_subdomain(group))))
    elif len(group.split(".")) < 2:
        errs.append(_invalid("spec.group", group, "should be a domain with at least one dot"))
    scope = spec.get("scope") or ""
    if not scope:
        errs.append(_required("spec.scope"))
    elif scope not in ("Cluster", "Namespaced"):
        errs.append(_not_supported("spec.scope", scope, ["Cluster", "Namespaced"]))
    if not (isinstance(top_schema, dict) and top_schema.get("openAPIV3Schema")):
        for i, v in enumerate(versions):
            if not (v.get("schema") or {}).get("openAPIV3Schema"):
                errs.append(_required(f"spec.versions[{i}].schema.openAPIV3Schema", "schemas are required"))
    if spec.get("preserveUnknownFields") and any(
            _schema_has((v.get("schema") or {}).get("openAPIV3Schema"), lambda s: "default" in s) for v in versions):
        errs.append(_invalid("spec.preserveUnknownFields", True,
                             "must be false in order to use defaults in the schema"))

    storage, seen_names, unique = 0, set(), True
    for i, v in enumerate(versions):
        vp = f"spec.versions[{i}]"
        storage += bool(v.get("storage"))
        unique &= v.get("name") not in seen_names
        seen_names.add(v.get("name"))
        name = v.get("name") or ""
        if is_dns1035_label(name):
            errs.append(_invalid(f"{vp}.name", name, ",".join(is_dns1035_label(name))))
        # validateCustomResourceDefinitionVersion
        warning = v.get("deprecationWarning")
        if warning is not None:
            if not v.get("deprecated"):
                errs.append(_invalid(f"{vp}.deprecationWarning", warning, "can only be set for deprecated versions"))
            elif len(warning) > 256:
                errs.append(_invalid(f"{vp}.deprecationWarning", warning, "must be <= 256 characters long"))
            elif not warning:
                errs.append(_invalid(f"{vp}.deprecationWarning", warning, "must not be an empty string"))
        subresources = top_sub if sub_shared else v.get("subresources")
        status_enabled = isinstance(subresources, dict) and subresources.get("status") is not None
        if not schema_shared:
            errs += _crd_validation((v.get("schema") or {}).get("openAPIV3Schema"), status_enabled, f"{vp}.schema")
        if not sub_shared:
            errs += _subresources(v.get("subresources"), f"{vp}.subresources")
        if not cols_shared:
            for j, col in enumerate(v.get("additionalPrinterColumns") or []):
                errs += _printer_column(col, f"{vp}.additionalPrinterColumns[{j}]")
    versions_value = GoStruct("[]apiextensions.CustomResourceDefinitionVersion{...}")
    if not unique:
        errs.append(_invalid("spec.versions", versions_value, "must contain unique version names"))
    if storage != 1:
        errs.append(_invalid("spec.versions", versions_value,
                             "must have exactly one version marked as storage version"))
    if versions and is_dns1035_label(versions[0].get("name") or ""):
        first = versions[0].get("name") or ""
        if first:  # the internal spec.version is versions[0].name (conversion.go), checked on its own
            errs.append(_invalid("spec.version", first, ",".join(is_dns1035_label(first))))
    for key in ("plural", "singular", "kind", "listKind"):
        if not names.get(key):
            errs.append(_required(f"spec.names.{key}"))
    errs += _names(names, "spec.names")
    if schema_shared and isinstance(top_schema, dict):
        any_status = (isinstance(top_sub, dict) and top_sub.get("status") is not None) if sub_shared else any(
            isinstance(v.get("subresources"), dict) and v["subresources"].get("status") is not None for v in versions)
        errs += _crd_validation(top_schema.get("openAPIV3Schema"), any_status, "spec.validation")
    if sub_shared:
        errs += _subresources(top_sub, "spec.subresources")
    if cols_shared:
        for j, col in enumerate(top_cols or []):
            errs += _printer_column(col, f"spec.additionalPrinterColumns[{j}]")
    conversion = spec.get("conversion") or {}
    strategy = conversion.get("strategy", "None")
    if strategy not in ("None", "Webhook"):
        errs.append(_not_supported("spec.conversion.strategy", strategy, ["None", "Webhook"]))
    errs += _stored_versions(versions)
    if spec.get("preserveUnknownFields"):
        errs.append(_invalid("spec.preserveUnknownFields", True, "cannot set to true, set "
                             "x-kubernetes-preserve-unknown-fields to true in spec.versions[*].schema instead"))
    return errs


def _stored_versions(versions: list[dict[str, Any]]) -> list[FieldError]:
    """status.storedVersions of a CRD being created, as the server checks it.

    PrepareForCreate (`apiextensions-apiserver/pkg/registry/customresourcedefinition/strategy.go`) records only the
    first version marked as storage (its loop breaks there); ValidateCustomResourceDefinitionStoredVersions
    (`apiextensions-apiserver/pkg/apis/apiextensions/validation/validation.go`) then wants every storage version
    in that list, so a second storage version is reported here as well as under spec.versions. The bad value is the
    stored list (kubernetes/kubernetes#119653, v1.29 on; before it the server dumped the version struct). Its third
    check, a stored version missing from spec.versions, cannot fail on create: the list comes from spec.versions."""
    path = "status.storedVersions"
    stored = next(([str(v.get("name") or "")] for v in versions if v.get("storage")), [])
    if not stored:
        return [_invalid(path, GoStruct("[]string(nil)"), "must have at least one stored version")]
    errs: list[FieldError] = []
    left = dict.fromkeys(stored)  # Go's storedVersionsMap: a name is crossed off at its first match
    for v in versions:
        name = str(v.get("name") or "")
        found = name in left
        if v.get("storage") and not found:
            errs.append(_invalid(path, list(stored), f"must have the storage version {name}"))
        if found:
            del left[name]
    return errs


# --------------------------------------------------------------------------- lint (not the server)


def _names_a_field(schema: dict[str, Any], json_path: str) -> bool:
    parts = [p for p in re.split(r"\.|\[[^\]]*\]", json_path) if p]
    if parts[:1] == ["metadata"]:
        return True  # ObjectMeta is implicit in every CRD schema
    node: dict[str, Any] | None = schema
    for part in parts:
        if node is None:
            return False
        if _t(node) == "array":
            node = _items(node) or {}
        if node.get("x-kubernetes-preserve-unknown-fields") or _ap(node)[0]:
            return True  # whatever is there is kept; the schema cannot say more
        node = _props(node).get(part)
    return node is not None


def printer_column_problems(crd: dict[str, Any]) -> list[str]:
    """Printer columns whose jsonPath names no field of the schema. The API server accepts these (it checks
    only the path's syntax, see _printer_column) and kubectl prints an empty column, so a typo goes unseen."""
    out = []
    for i, v in enumerate((crd.get("spec") or {}).get("versions") or []):
        schema = ((v.get("schema") or {}).get("openAPIV3Schema")) or {}
        for j, col in enumerate(v.get("additionalPrinterColumns") or []):
            if not _names_a_field(schema, str(col.get("jsonPath", ""))):
                out.append(f"spec.versions[{i}].additionalPrinterColumns[{j}].jsonPath: {col.get('jsonPath')} names "
                           "no field of the schema (kubectl prints an empty column)")
    return out
