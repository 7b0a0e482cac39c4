"""The CapabilityStatement at ``/fhir/metadata`` (R4 capabilitystatement.html), generated from
what the server really does: every R4 resource type with the interactions the REST edge
implements. Every search parameter of the type is listed (the standard R4 ones and custom ones)."""

from __future__ import annotations

from typing import Any

from medflow import __version__
from medflow.fhir.definitions import resource_types, search_params

INTERACTIONS = ["read", "vread", "update", "patch", "delete", "history-instance",
                "history-type", "create", "search-type"]  # fmt: skip


def capability_statement(base_url: str) -> dict[str, Any]:
    resources = [
        {
            "type": rtype,
            "interaction": [{"code": code} for code in INTERACTIONS],
            "versioning": "versioned-update",
            "readHistory": True,
            "updateCreate": True,
            "conditionalCreate": True,
            "conditionalUpdate": True,
            "conditionalDelete": "single",
            "searchParam": [
                {"name": code, "type": param.type}
                for code, param in sorted(search_params(rtype).items())
                if not param.special or code in ("_id", "_lastUpdated")
            ],
        }
        for rtype in sorted(resource_types())
    ]
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-22",
        "kind": "instance",
        "software": {"name": "medflow", "version": __version__},
        "implementation": {"description": "medflow FHIR R4 server", "url": base_url},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "patchFormat": ["application/json-patch+json"],
        "rest": [
            {
                "mode": "server",
                "resource": resources,
                "interaction": [
                    {"code": "history-system"},
                    {"code": "search-system"},
                    {"code": "transaction"},
                    {"code": "batch"},
                ],
                "operation": [
                    {
                        "name": "everything",
                        "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything",
                    },
                    {
                        "name": "export",
                        "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export",
                    },
                    {
                        # SQL-on-FHIR v2: POST|GET [base]/ViewDefinition/$run (views_api.py)
                        "name": "run",
                        "definition": "http://sql-on-fhir.org/OperationDefinition/$run",
                    },
                ],
            }
        ],
    }
