"""Schemathesis hooks of tests/schemathesis.sh (SCHEMATHESIS_HOOKS); why each is honest is
written there. The script sets ORPOD_ST_MODEL (a model inside the daemon's model_roots) and
ORPOD_ST_DATASET (the `sha256:<hex>` of a data set it uploaded)."""

import json
import os

import schemathesis

MODEL = os.environ["ORPOD_ST_MODEL"]
DATASET = os.environ["ORPOD_ST_DATASET"]
# Jobs that take a job file: `job_toml` is TOML text, which JSON Schema cannot describe.
JOB_FILES = [
    f'[model]\nbase = "{MODEL}"\n[data]\ntrain = "{DATASET}"\nmax_length = 64\n'
    "[train]\nmax_steps = 1\n",
    f'name = "from a job file"\n[model]\nbase = "{MODEL}"\n'
    f'[data]\ntrain = "{DATASET}"\neval = "{DATASET}"\nmax_length = 32\nmax_prompt_length = 16\n'
    'truncation_mode = "keep_start"\n[lora]\nr = 2\ntarget_modules = ["q_proj"]\n'
    "[train]\nepochs = 2.0\nbatch_size = 2\n",
]
JOB_OPERATIONS = {("POST", "/v1/jobs"), ("POST", "/v1/plan")}


@schemathesis.serializer("application/x-ndjson")
def ndjson(ctx, value):
    """JSON Lines: the schema is that of the sequence of lines (OpenAPI 3.2's `itemSchema`), so
    an array is one line per item. Anything else (a negative case) is one line of its JSON."""
    if isinstance(value, list):
        return "".join(json.dumps(row) + "\n" for row in value).encode()
    return json.dumps(value).encode()


def _positive_job(case):
    """The body of a schema-valid job submit or plan, or None."""
    if (case.method.upper(), case.operation.path) not in JOB_OPERATIONS:
        return None
    if case.meta is None or not case.meta.generation.mode.is_positive:
        return None
    return case.body if isinstance(case.body, dict) else None


@schemathesis.hook
def map_case(ctx, case):
    """Names what exists on this server where a valid job names a server resource: the model,
    the uploaded data sets, no init adapter (none is on the server); a valid job file for
    `job_toml`. Each value still matches the key's schema."""
    body = _positive_job(case)
    if body is None:
        return case
    if isinstance(body.get("job_toml"), str):
        body["job_toml"] = JOB_FILES[len(body["job_toml"]) % len(JOB_FILES)]
    spec = body.get("spec")
    if isinstance(spec, dict):
        if isinstance(spec.get("model"), dict):
            spec["model"]["base"] = MODEL
        data = spec.get("data")
        if isinstance(data, dict):
            data["train"] = DATASET
            if data.get("eval"):
                data["eval"] = DATASET
        lora = spec.get("lora")
        if isinstance(lora, dict) and lora.get("init_adapter"):
            lora["init_adapter"] = ""
    return case


@schemathesis.hook
def filter_case(ctx, case):
    """Drops valid-looking jobs that break the one rule between keys that JSON Schema cannot
    state (it is in the schema's description): `data.max_prompt_length` below `data.max_length`."""
    body = _positive_job(case)
    spec = body.get("spec") if body is not None else None
    data = spec.get("data") if isinstance(spec, dict) else None
    if not isinstance(data, dict):
        return True
    prompt = data.get("max_prompt_length")
    length = data.get("max_length", 1024)
    # A whole float (`3141.0`) is a JSON Schema integer too.
    numbers = all(isinstance(n, (int, float)) and not isinstance(n, bool) for n in (prompt, length))
    return not (numbers and prompt >= length)
