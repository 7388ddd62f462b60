"""Independent attachment checks for the Rust tests (pydicom and Pillow, from .tools/media).

  dicom-make OUT                   a DICOM Part 10 ultrasound object full of PHI
  dicom-check DEID ORIG REJOINED   JSON: PHI values left in DEID; REJOINED equal to ORIG
  photo-make OUT                   a JPEG with EXIF (GPS, camera serial, time) and XMP
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


def photo_make(out):
    from PIL import Image

    img = Image.new("RGB", (640, 480))
    for x in range(0, 640, 8):
        for y in range(0, 480, 8):
            img.putpixel((x, y), ((x * 3) % 256, (y * 5) % 256, 90))
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
     "photo-make": photo_make, "photo-check": photo_check}[cmd](*args)
