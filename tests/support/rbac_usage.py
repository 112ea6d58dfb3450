"""Which RBAC permissions a body of Python code needs, read from the code itself: every
method of the official Kubernetes client's API classes that it calls (or passes on, as to
``Watch().stream``), turned into the request the client sends and that request into what
the API server authorizes, (apiGroup, resource, verb). The request comes from the client's
own generated code (each method's HTTP method and path), not from a table kept by hand, so
a new call is seen the day it is written. kubernetes_asyncio is generated from the same
OpenAPI, so its methods read the same.

A request outside any namespace (the cluster-scoped resources, which no namespaced Role
grants) is reported with the resource prefixed "cluster:"; requests that name no resource
at all (/version, API discovery) need no Role and are left out."""

from __future__ import annotations

import ast
import inspect
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import kubernetes.client

Triple = tuple[str, str, str]  # (apiGroup, resource, verb), as a Role's rules spell them

_SUFFIXES = ("_with_http_info", "_without_preload_content")
_PREFIX = re.compile(r"/(?:api/v1|apis/(?P<group>[^/]+)/[^/]+)(?:/(?P<rest>.*))?")
_RESOURCE = re.compile(
    r"(?P<ns>namespaces/\{namespace\}/)?(?P<resource>[^/]+)(?P<item>/\{name\})?(?:/(?P<sub>[^/]+))?"
)


@dataclass(frozen=True)
class Use:
    triple: Triple
    where: str  # path:line


@cache
def request(api: str, method: str) -> tuple[str, str]:
    """(HTTP method, path template) the client sends for ``api.method``."""
    source = inspect.getsource(getattr(getattr(kubernetes.client, api), f"_{method}_serialize"))
    found = re.search(r"method='(\w+)',\s*resource_path='([^']+)'", source)
    assert found, f"{api}.{method}: no request in the client's code"
    return found.group(1), found.group(2)


def authorized(http: str, path: str, watch: bool = False) -> Triple | None:
    """What the API server checks for this request; None for non-resource requests."""
    m = _PREFIX.fullmatch(path)
    if m is None or not m.group("rest"):
        return None
    group = m.group("group") or ""
    n = _RESOURCE.fullmatch(m.group("rest"))
    assert n, path
    resource = n.group("resource") + (f"/{n.group('sub')}" if n.group("sub") else "")
    if not n.group("ns"):
        resource = "cluster:" + resource
    named = bool(n.group("item"))
    verb = {
        "GET": "get" if named else ("watch" if watch else "list"),
        "POST": "create",
        "PUT": "update",
        "PATCH": "patch",
        "DELETE": "delete" if named else "deletecollection",
    }[http]
    return group, resource, verb


def api_methods(apis: Iterable[str]) -> dict[str, str]:
    """Method name -> API class, for the client's classes named. A name several classes
    share must mean the same permission in each (get_api_resources: discovery, none)."""
    owner: dict[str, str] = {}
    for api in sorted(apis):
        cls = getattr(kubernetes.client, api)
        for name in dir(cls):
            if not name.startswith("_") and hasattr(cls, f"_{name}_serialize"):
                if name in owner:
                    first = authorized(*request(owner[name], name))
                    assert first == authorized(*request(api, name)), (name, owner[name], api)
                    continue
                owner[name] = api
    return owner


def _api_classes(trees: Iterable[ast.AST]) -> set[str]:
    """The client's API classes the code constructs (``client.CoreV1Api(...)``)."""
    found = set()
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                f = node.func
                name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
                if name.endswith("Api") and isinstance(
                    getattr(kubernetes.client, name, None), type
                ):
                    found.add(name)
    return found


def _constants(tree: ast.Module) -> dict[str, str]:
    return {
        t.id: node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
        for t in node.targets
        if isinstance(t, ast.Name) and isinstance(node.value.value, str)
    }


def _argument(call: ast.Call | None, api: str, method: str, name: str, consts: dict) -> str:
    """A path parameter (group, plural of the custom-object methods) given as a string
    literal or a module constant."""
    params = list(inspect.signature(getattr(getattr(kubernetes.client, api), method)).parameters)
    node = None
    if call is not None:
        node = next((k.value for k in call.keywords if k.arg == name), None)
        index = params.index(name) - 1  # less self
        if node is None and index < len(call.args):
            node = call.args[index]
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name) and node.id in consts:
        return consts[node.id]
    raise AssertionError(f"{api}.{method}: give {name} as a literal or a module constant")


def uses(files: Iterable[Path], root: Path) -> list[Use]:
    """Every permission the code in ``files`` needs, with where it is needed."""
    trees = {path: ast.parse(path.read_text(), str(path)) for path in files}
    methods = api_methods(_api_classes(trees.values()))
    found = []
    for path, tree in trees.items():
        consts = _constants(tree)
        parent = {c: n for n in ast.walk(tree) for c in ast.iter_child_nodes(n)}
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute):
                continue
            method = node.attr
            for suffix in _SUFFIXES:
                method = method.removesuffix(suffix)
            if method not in methods:
                continue
            api = methods[method]
            up = parent.get(node)
            call = up if isinstance(up, ast.Call) and up.func is node else None
            streamed = (
                isinstance(up, ast.Call)
                and node in up.args
                and getattr(up.func, "attr", getattr(up.func, "id", "")) == "stream"
            )
            watch = streamed or any(
                k.arg == "watch" and getattr(k.value, "value", False) is True
                for k in (call.keywords if call else [])
            )
            http, template = request(api, method)
            for name in ("group", "plural"):
                if "{" + name + "}" in template:
                    template = template.replace(
                        "{" + name + "}", _argument(call, api, method, name, consts)
                    )
            triple = authorized(http, template, watch)
            if triple is not None:
                found.append(Use(triple, f"{path.relative_to(root)}:{node.lineno}"))
    return found


def by_triple(found: Iterable[Use]) -> dict[Triple, list[str]]:
    out: dict[Triple, list[str]] = defaultdict(list)
    for use in found:
        out[use.triple].append(use.where)
    return dict(out)


def granted(role: dict) -> set[Triple]:
    """Every (apiGroup, resource, verb) a Role's rules allow (resourceNames aside)."""
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
