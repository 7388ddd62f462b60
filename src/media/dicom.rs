//! The DICOM PHI split. An object (a Part 10 file: preamble, `DICM`, file meta group, data set)
//! is parsed with `dicom-object` and cut in two:
//!
//! - the de-identified object: the same file without the attributes that name or identify the
//!   patient, staff, institution or device, and without their dates and times (a curated subset
//!   of the DICOM PS3.15 Basic Application Confidentiality Profile, plus every element of the
//!   patient group 0010 and every private element, which may hold anything);
//! - the PHI part: the original 128-byte preamble followed by a Part 10 object with the same
//!   meta group holding only the removed elements (and the character set, so names decode).
//!
//! [`join`] puts the two back together; for a file written in canonical order (every DICOM
//! writer's) the result is byte-identical to the original. The only importer of `dicom-*`.

use dicom_core::Tag;
use dicom_object::file::ReadPreamble;
use dicom_object::{FileDicomObject, InMemDicomObject, OpenFileOptions};

use super::MediaError;
use crate::model::MediaType;

/// Top-level attributes moved to the PHI part (besides group 0010 and private groups).
const PHI_TAGS: &[(u16, u16)] = &[
    (0x0008, 0x0012), // Instance Creation Date
    (0x0008, 0x0013), // Instance Creation Time
    (0x0008, 0x0020), // Study Date
    (0x0008, 0x0021), // Series Date
    (0x0008, 0x0022), // Acquisition Date
    (0x0008, 0x0023), // Content Date
    (0x0008, 0x002A), // Acquisition DateTime
    (0x0008, 0x0030), // Study Time
    (0x0008, 0x0031), // Series Time
    (0x0008, 0x0032), // Acquisition Time
    (0x0008, 0x0033), // Content Time
    (0x0008, 0x0050), // Accession Number
    (0x0008, 0x0080), // Institution Name
    (0x0008, 0x0081), // Institution Address
    (0x0008, 0x0090), // Referring Physician's Name
    (0x0008, 0x0092), // Referring Physician's Address
    (0x0008, 0x0094), // Referring Physician's Telephone Numbers
    (0x0008, 0x1010), // Station Name
    (0x0008, 0x1040), // Institutional Department Name
    (0x0008, 0x1048), // Physician(s) of Record
    (0x0008, 0x1050), // Performing Physician's Name
    (0x0008, 0x1060), // Name of Physician(s) Reading Study
    (0x0008, 0x1070), // Operators' Name
    (0x0008, 0x1120), // Referenced Patient Sequence
    (0x0018, 0x1000), // Device Serial Number
    (0x0018, 0x1002), // Device UID
    (0x0020, 0x0010), // Study ID
    (0x0020, 0x4000), // Image Comments
    (0x0032, 0x1032), // Requesting Physician
    (0x0032, 0x1060), // Requested Procedure Description
    (0x0038, 0x0010), // Admission ID
    (0x0038, 0x0300), // Current Patient Location
    (0x0040, 0x0244), // Performed Procedure Step Start Date
    (0x0040, 0x0245), // Performed Procedure Step Start Time
    (0x0040, 0x0275), // Request Attributes Sequence
    (0x0040, 0xA124), // UID
    (0x0040, 0xA730), // Content Sequence
];

const SPECIFIC_CHARACTER_SET: Tag = Tag(0x0008, 0x0005);

/// Whether an attribute of the root data set goes to the PHI part.
pub fn is_phi(tag: Tag) -> bool {
    tag.group() == 0x0010
        || tag.group() % 2 == 1
        || PHI_TAGS.contains(&(tag.group(), tag.element()))
}

/// A split object.
#[derive(Debug)]
pub struct Split {
    pub deidentified: Vec<u8>,
    pub phi: Vec<u8>,
    /// How many attributes moved to the PHI part.
    pub removed: usize,
}

fn malformed(e: impl std::fmt::Display) -> MediaError {
    MediaError::malformed(MediaType::Dicom, e.to_string())
}

fn read(bytes: &[u8]) -> Result<FileDicomObject<InMemDicomObject>, MediaError> {
    if bytes.len() < 132 || &bytes[128..132] != b"DICM" {
        return Err(MediaError::DicomNoPreamble);
    }
    OpenFileOptions::new()
        .read_preamble(ReadPreamble::Always)
        .from_reader(bytes)
        .map_err(|e| {
            let s = e.to_string();
            if s.contains("end of file") || s.contains("UnexpectedEof") || s.contains("EOF") {
                MediaError::truncated(MediaType::Dicom, "the data set ends early")
            } else {
                malformed(s)
            }
        })
}

fn write(obj: &FileDicomObject<InMemDicomObject>) -> Result<Vec<u8>, MediaError> {
    let mut out = Vec::new();
    obj.write_all(&mut out).map_err(malformed)?;
    Ok(out)
}

/// Splits a Part 10 object into its de-identified object and its PHI part.
pub fn split(bytes: &[u8]) -> Result<Split, MediaError> {
    let mut obj = read(bytes)?;
    let meta = obj.meta().clone();
    let phi_tags: Vec<Tag> = obj.tags().filter(|t| is_phi(*t)).collect();
    let mut phi = InMemDicomObject::new_empty();
    if let Ok(cs) = obj.element(SPECIFIC_CHARACTER_SET) {
        phi.put(cs.clone());
    }
    for t in &phi_tags {
        if let Ok(e) = obj.take_element(*t) {
            phi.put(e);
        }
    }
    let deidentified = write(&obj)?;
    let mut phi_bytes = bytes[..128].to_vec();
    phi_bytes.extend(write(&phi.with_exact_meta(meta))?[128..].iter());
    Ok(Split {
        deidentified,
        phi: phi_bytes,
        removed: phi_tags.len(),
    })
}

/// Puts a split object back together: the de-identified object with the PHI part's attributes
/// and the original preamble.
pub fn join(deidentified: &[u8], phi: &[u8]) -> Result<Vec<u8>, MediaError> {
    if phi.len() < 128 {
        return Err(malformed("the PHI part is shorter than a preamble"));
    }
    let mut obj = read(deidentified)?;
    let mut part = vec![0u8; 128];
    part.extend_from_slice(&phi[128..]);
    let p = read(&part)?;
    for e in p.iter() {
        if e.header().tag != SPECIFIC_CHARACTER_SET {
            obj.put(e.clone());
        }
    }
    let mut out = write(&obj)?;
    out[..128].copy_from_slice(&phi[..128]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_object::meta::FileMetaTableBuilder;

    fn sample() -> Vec<u8> {
        let mut o = InMemDicomObject::new_empty();
        let put = |o: &mut InMemDicomObject, g, e, vr, v: &str| {
            o.put(DataElement::new(Tag(g, e), vr, PrimitiveValue::from(v)));
        };
        put(
            &mut o,
            0x0008,
            0x0016,
            VR::UI,
            "1.2.840.10008.5.1.4.1.1.6.1",
        );
        put(&mut o, 0x0008, 0x0018, VR::UI, "1.2.3.4.5");
        put(&mut o, 0x0008, 0x0060, VR::CS, "US");
        put(&mut o, 0x0008, 0x0080, VR::LO, "St Elsewhere");
        put(&mut o, 0x0010, 0x0010, VR::PN, "Doe^Jane");
        put(&mut o, 0x0010, 0x0020, VR::LO, "MRN-4242");
        put(&mut o, 0x0010, 0x0030, VR::DA, "19700101");
        put(&mut o, 0x0018, 0x1000, VR::LO, "SN-0042");
        put(&mut o, 0x0028, 0x0010, VR::US, "2");
        let meta = FileMetaTableBuilder::new()
            .media_storage_sop_class_uid("1.2.840.10008.5.1.4.1.1.6.1")
            .media_storage_sop_instance_uid("1.2.3.4.5")
            .transfer_syntax("1.2.840.10008.1.2.1")
            .build()
            .unwrap();
        let mut b = Vec::new();
        o.with_exact_meta(meta).write_all(&mut b).unwrap();
        b[0] = 0x42; // a non-zero preamble survives the round trip
        b
    }

    #[test]
    fn the_phi_goes_to_its_own_part_and_comes_back_exactly() {
        let orig = sample();
        let s = split(&orig).unwrap();
        assert_eq!(s.removed, 5);
        for needle in [
            &b"Doe^Jane"[..],
            b"MRN-4242",
            b"19700101",
            b"St Elsewhere",
            b"SN-0042",
        ] {
            assert!(!s.deidentified.windows(needle.len()).any(|w| w == needle));
            assert!(s.phi.windows(needle.len()).any(|w| w == needle));
        }
        assert_eq!(join(&s.deidentified, &s.phi).unwrap(), orig);
    }

    #[test]
    fn bad_objects_get_named_errors() {
        let orig = sample();
        assert_eq!(split(&orig[128..]).unwrap_err().code(), "DICOM_NO_PREAMBLE");
        let e = split(&orig[..orig.len() - 5]).unwrap_err();
        assert!(
            matches!(e.code(), "TRUNCATED_FILE" | "MALFORMED_FILE"),
            "{e}"
        );
    }
}
