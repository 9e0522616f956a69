"""Published JSON Schemas of trigrecon's result files.

    import jsonschema, json
    jsonschema.validate(json.load(open("runs/audit/x/audit.json")), audit_schema())
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

AUDIT_SCHEMA = Path(__file__).with_name("audit.schema.json")


def audit_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of audit.json."""
    data: dict[str, Any] = json.loads(AUDIT_SCHEMA.read_text())
    return data
