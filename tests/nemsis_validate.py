#!/usr/bin/env python3
"""Validates NEMSIS v3.5.1 EMSDataSet documents with third-party tools only.

Usage: nemsis_validate.py STANDARD_DIR FILE...

Step 1: XML Schema (`xmlschema`) against STANDARD_DIR/xsd/EMSDataSet_v3.xsd.
Step 2: the national Schematron (STANDARD_DIR/schematron/rules/EMSDataSet.sch), compiled with
NEMSIS's ISO Schematron XSLT 2 stylesheets by SaxonC-HE (`saxonche`), applied to each document;
the SVRL output's failed asserts and successful reports are classified by their role.

Prints one JSON object per file on stdout:
{"file", "xsd_errors": [...], "errors": [...], "warnings": [...]}.
Exit status 0 when every file has no XSD error and no [ERROR]/[FATAL] Schematron finding.
"""
import json
import os
import sys
import tempfile
import xml.etree.ElementTree as ET

import xmlschema
from saxonche import PySaxonProcessor

SVRL = "{http://purl.oclc.org/dsdl/svrl}"


def compile_schematron(proc, std, tmp):
    util = os.path.join(std, "schematron", "utilities", "iso-schematron-xslt2")
    src = os.path.join(std, "schematron", "rules", "EMSDataSet.sch")
    xslt = proc.new_xslt30_processor()
    # Each step reads the previous step's file; the first reads the rules in place, so that
    # their relative includes resolve.
    for i, (step, params) in enumerate((
        ("iso_dsdl_include.xsl", {}),
        ("iso_abstract_expand.xsl", {}),
        ("iso_svrl_for_xslt2.xsl", {"allow-foreign": "true"}),
    )):
        ex = xslt.compile_stylesheet(stylesheet_file=os.path.join(util, step))
        for k, v in params.items():
            ex.set_parameter(k, proc.make_string_value(v))
        out = os.path.join(tmp, f"step{i}.xsl")
        ex.transform_to_file(source_file=src, output_file=out)
        src = out
    return xslt.compile_stylesheet(stylesheet_file=src)


def findings(svrl_text):
    root = ET.fromstring(svrl_text)
    errors, warnings = [], []
    for tag in ("failed-assert", "successful-report"):
        for el in root.iter(SVRL + tag):
            role = el.get("role") or ""
            text = " ".join(" ".join("".join(t.itertext()).split()) for t in el.findall(SVRL + "text"))
            loc = (el.get("location") or "").replace("[namespace-uri()='http://www.nemsis.org']", "")
            item = f"{role} {text} @ {loc.replace('*:', '')}"
            (errors if role in ("[ERROR]", "[FATAL]") else warnings).append(item)
    return errors, warnings


def main():
    std, files = sys.argv[1], sys.argv[2:]
    schema = xmlschema.XMLSchema(os.path.join(std, "xsd", "EMSDataSet_v3.xsd"))
    ok = True
    with PySaxonProcessor(license=False) as proc, tempfile.TemporaryDirectory() as tmp:
        compiled = compile_schematron(proc, std, tmp)
        for f in files:
            xsd_errors = [f"{e.reason} @ {e.path}" for e in schema.iter_errors(f)]
            errors, warnings = findings(compiled.transform_to_string(source_file=os.path.abspath(f)))
            ok = ok and not xsd_errors and not errors
            print(json.dumps({"file": f, "xsd_errors": xsd_errors, "errors": errors, "warnings": warnings}))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
