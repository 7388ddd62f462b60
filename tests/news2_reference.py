"""Scores NEWS2 with the independent `vitalscore` package (PyPI) for the differential test.

Reads CSV rows `rr,spo2,on_oxygen,scale2,sbp,hr,acvpu,temp` from argv[1] and writes
`total,rr,spo2,o2,sbp,hr,consciousness,temp` sub-scores to argv[2].
"""
import csv
import sys

from vitalscore.scores.news2 import ACVPULevel, NEWS2Result

LEVELS = [ACVPULevel.ALERT, ACVPULevel.CONFUSION, ACVPULevel.VOICE, ACVPULevel.PAIN, ACVPULevel.UNRESPONSIVE]

with open(sys.argv[1]) as fin, open(sys.argv[2], "w", newline="") as fout:
    out = csv.writer(fout)
    for rr, spo2, o2, s2, sbp, hr, acvpu, temp in csv.reader(fin):
        r = NEWS2Result(
            respiratory_rate=int(rr),
            spo2=float(spo2),
            on_oxygen=o2 == "1",
            systolic_bp=int(sbp),
            heart_rate=int(hr),
            consciousness=LEVELS[int(acvpu)],
            temperature=float(temp),
            use_spo2_scale2=s2 == "1",
        )
        out.writerow([r.total, r.rr_score, r.spo2_score, r.o2_score, r.sbp_score, r.hr_score, r.consciousness_score, r.temp_score])
