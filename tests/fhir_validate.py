"""Independent FHIR R4 (4.0.1) validation of HEMA3N bundles, run by tests/fhir_bundle.rs.

Parses each file with the `fhir.resources` 6.1.0 models (FHIR 4.0.1, pydantic: cardinality,
datatypes, required elements, unknown elements), then checks bundle-level rules the models do
not: every reference resolves to an entry's fullUrl, fullUrls are unique urn:uuid, vital-sign
Observations carry a LOINC code (others at least a code text). Prints one line per file; exits 1 on the first failure.
"""
import json
import re
import sys

from fhir.resources import __fhir_version__
from fhir.resources.bundle import Bundle

assert __fhir_version__ == "4.0.1", __fhir_version__
UUID = re.compile(r"^urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def refs(node, out):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "reference" and isinstance(v, str):
                out.append(v)
            else:
                refs(v, out)
    elif isinstance(node, list):
        for v in node:
            refs(v, out)


def check(path):
    raw = json.load(open(path))
    Bundle.parse_obj(raw)  # raises with every violation listed
    urls = [e["fullUrl"] for e in raw["entry"]]
    assert len(urls) == len(set(urls)), "duplicate fullUrl"
    for u in urls:
        assert UUID.match(u), f"fullUrl {u} is not a urn:uuid"
    found = []
    refs(raw, found)
    for r in found:
        assert r in urls, f"dangling reference {r}"
    kinds = {}
    for e in raw["entry"]:
        res = e["resource"]
        kinds[res["resourceType"]] = kinds.get(res["resourceType"], 0) + 1
        if res["resourceType"] == "Observation":
            cats = {c.get("code") for cat in res.get("category", []) for c in cat.get("coding", [])}
            systems = {c["system"] for c in res["code"].get("coding", [])}
            if "vital-signs" in cats:
                assert "http://loinc.org" in systems, "vital-sign Observation without LOINC code"
            assert systems or res["code"].get("text"), "Observation without a code"
    return kinds


def main():
    for p in sys.argv[1:]:
        kinds = check(p)
        print(f"OK {p} " + " ".join(f"{k}={v}" for k, v in sorted(kinds.items())))


if __name__ == "__main__":
    main()
