"""Independent attachment checks for the Rust tests (pydicom and Pillow, from .tools/media).

  dicom-make OUT                   a DICOM Part 10 ultrasound object full of PHI
  dicom-check DEID ORIG REJOINED   JSON: PHI values left in DEID; REJOINED equal to ORIG
  photo-make OUT [W H]             a JPEG with EXIF (GPS, camera serial, time) and XMP
  ecg-pdf OUT                      a one-page PDF of a 12-lead ECG strip (drawn, as monitors print)
  photo-check FILE                 JSON: what metadata FILE still carries
"""
import json
import sys

PHI = {
    "PatientName": "Sentinel^Dicomina",
    "PatientID": "MRN-DCM-77341",
    "PatientBirthDate": "19610704",
    "InstitutionName": "Hospital Sentinelle",
    "ReferringPhysicianName": "Doctor^Referrer",
    "DeviceSerialNumber": "US-SERIAL-99812",
    "StudyDate": "20261201",
    "StationName": "AMBULANCE-7",
}


def dicom_make(out):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.6.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "US"
    ds.SpecificCharacterSet = "ISO_IR 100"
    for k, v in PHI.items():
        setattr(ds, k, v)
    ds.add_new(0x00090010, "LO", "ACME PRIVATE")
    ds.add_new(0x00091001, "LO", "private note about Sentinel")
    ds.Rows, ds.Columns = 64, 80
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = bytes(i % 251 for i in range(64 * 80))
    ds.save_as(out, enforce_file_format=True)


def dicom_check(deid, orig, rejoined):
    import pydicom

    d = pydicom.dcmread(deid)
    o = pydicom.dcmread(orig)
    r = pydicom.dcmread(rejoined)
    left = []
    for elem in d.iterall():
        text = str(elem.value)
        for k, v in PHI.items():
            if v in text or elem.keyword == k:
                left.append(elem.keyword or str(elem.tag))
        if elem.tag.is_private:
            left.append(str(elem.tag))
    print(json.dumps({
        "phi_left": sorted(set(left)),
        "deid_modality": str(d.get("Modality", "")),
        "deid_pixels": len(d.PixelData),
        "rejoined_equal": r == o and r.file_meta == o.file_meta and r.PixelData == o.PixelData,
        "rejoined_patient": str(r.get("PatientName", "")),
    }))


def photo_make(out, w="640", h="480"):
    from PIL import Image

    w, h = int(w), int(h)
    img = Image.new("RGB", (w, h))
    for x in range(0, w, 8):
        for y in range(0, h, 8):
            img.putpixel((x, y), ((x * 3) % 256, (y * 5) % 256, 90))
    if w * h > 640 * 480:
        # Camera-like grain, so that a large photo is also a large file.
        noise = Image.effect_noise((w, h), 40).convert("RGB")
        img = Image.blend(img, noise, 0.5)
    exif = Image.Exif()
    exif[0x010F] = "SentinelCam"  # Make
    exif[0x0110] = "Model SENT-1"  # Model
    exif[0x0132] = "2026:12:01 08:12:00"  # DateTime
    exif[0x0112] = 6  # Orientation
    exif[0xA431] = "BODY-SERIAL-55501"  # BodySerialNumber (in IFD0 is fine for the check)
    gps = {1: "N", 2: (40.0, 44.0, 54.36), 3: "W", 4: (73.0, 59.0, 8.5)}
    exif[0x8825] = gps
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/">SentinelXMP</x:xmpmeta>'
    img.save(out, "JPEG", exif=exif, xmp=xmp, quality=90)


def ecg_pdf(out):
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (1650, 1275), "white")
    d = ImageDraw.Draw(img)
    for x in range(0, 1650, 15):
        d.line([(x, 0), (x, 1275)], fill=(255, 200, 200) if x % 75 else (240, 120, 120))
    for y in range(0, 1275, 15):
        d.line([(0, y), (1650, y)], fill=(255, 200, 200) if y % 75 else (240, 120, 120))
    leads = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
    for i, lead in enumerate(leads):
        x0, y0 = 40 + (i // 3) * 400, 200 + (i % 3) * 300
        d.text((x0, y0 - 80), lead, fill="black")
        pts = []
        for t in range(360):
            beat = t % 90
            v = -90 if beat == 20 else 30 if beat in (18, 22) else -15 if 40 <= beat < 55 else 0
            pts.append((x0 + t, y0 + v))
        d.line(pts, fill="black", width=2)
    d.text((40, 20), "12-lead ECG  25 mm/s  10 mm/mV  HR 88  sinus rhythm", fill="black")
    img.save(out, "PDF", resolution=150.0)


def photo_check(path):
    from PIL import Image

    img = Image.open(path)
    img.load()
    exif = img.getexif()
    print(json.dumps({
        "format": img.format,
        "size": list(img.size),
        "exif_tags": len(exif),
        "gps": bool(exif.get_ifd(0x8825)) or 0x8825 in exif,
        "exif_block": "exif" in img.info,
        "xmp": "xmp" in img.info or "XML:com.adobe.xmp" in img.info,
    }))


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    {"dicom-make": dicom_make, "dicom-check": dicom_check,
     "photo-make": photo_make, "photo-check": photo_check, "ecg-pdf": ecg_pdf}[cmd](*args)
