"""Checks Flowgate's editors' schema (`flowgate schema`) with an independent
JSON Schema 2020-12 validator (python-jsonschema, formats on), the way an
editor sees a file: `${VAR}` not expanded.

Validates every pipeline in pipelines/, every connectors/*/sample.yaml, the
plugin template's pipeline, and every YAML block of README.md and docs/*.md
(a whole pipeline when it has `source:` and `sink:`, otherwise each top-level
key against its property). Prints one line per file; exits 1 on any problem.

usage: editor_schema.py SCHEMA.json REPO
"""
import glob
import json
import os
import re
import sys

import yaml
from jsonschema import Draft202012Validator, FormatChecker

schema_path, repo = sys.argv[1], sys.argv[2]
schema = json.load(open(schema_path))
Draft202012Validator.check_schema(schema)
validator = Draft202012Validator(schema, format_checker=FormatChecker())


def inputs():
    files = sorted(glob.glob(f"{repo}/pipelines/*.yaml")) + sorted(glob.glob(f"{repo}/connectors/*/sample.yaml"))
    for f in files:
        yield os.path.relpath(f, repo), open(f).read(), False
    template = open(f"{repo}/src/plugin_templates/pipeline.yaml").read()
    yield "src/plugin_templates/pipeline.yaml", template.replace("{{name}}", "t").replace("{{wasm}}", "t.wasm"), False
    for md in [f"{repo}/README.md"] + sorted(glob.glob(f"{repo}/docs/**/*.md", recursive=True)):
        lines = open(md).read().split("\n")
        i = 0
        while i < len(lines):
            m = re.match(r"^\s*```(\w*)", lines[i])
            if not m:
                i += 1
                continue
            j = i + 1
            while j < len(lines) and not lines[j].strip().startswith("```"):
                j += 1
            block = "\n".join(lines[i + 1 : j])
            whole = re.search(r"(?m)^source:", block) and re.search(r"(?m)^sink:", block)
            if whole or m.group(1) in ("yaml", "yml"):
                yield f"{os.path.relpath(md, repo)}:{i + 2}", block, not whole
            i = j + 1


def problems(doc, fragment):
    if not fragment:
        return [(e.json_path, e) for e in validator.iter_errors(doc)]
    if not isinstance(doc, dict):
        return []
    props = schema["properties"]
    found = []
    for key, value in doc.items():
        if key not in props:
            continue  # a snippet of something else (a plugin's own config, a compose file)
        sub = dict(props[key], **{"$defs": schema["$defs"]})
        found += [(f"$.{key}{e.json_path[1:]}", e) for e in Draft202012Validator(sub, format_checker=FormatChecker()).iter_errors(value)]
    return found


def deepest(e):
    """The innermost reasons under a oneOf/anyOf, for a readable message."""
    if not e.context:
        return [e.message]
    return [m for c in e.context for m in deepest(c) if "is a required property" not in m] or [e.message]


failed = 0
checked = 0
for name, text, fragment in inputs():
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError:
        continue  # not YAML (a shell block with `source:` in it)
    checked += 1
    found = problems(doc, fragment)
    if found:
        failed += 1
        for path, e in found:
            print(f"{name}: {path}: {'; '.join(deepest(e))[:300]}")
    else:
        print(f"{name}: ok")
print(f"{checked} checked, {failed} with problems")
sys.exit(1 if failed or checked < 15 else 0)
