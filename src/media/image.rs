//! Streaming metadata strippers for JPEG and PNG. They walk the file's own structure (JPEG
//! marker segments, PNG chunks) as bytes arrive, pass image data through untouched and drop
//! every block that can identify a person, a place or a device:
//!
//! - JPEG: APP1 (EXIF with GPS, serial numbers, times; XMP), APP2 other than the ICC colour
//!   profile (FlashPix, MPF with its embedded previews), APP3-APP13 (IPTC, Photoshop), APP15,
//!   comments, and anything after the end-of-image marker (camera trailers, second images).
//!   Kept: JFIF (APP0), the ICC profile, Adobe (APP14) colour transform, and every coding
//!   segment. The EXIF orientation is read before APP1 is dropped.
//! - PNG: `eXIf`, `tEXt`, `zTXt`, `iTXt`, `tIME`; everything else is kept.
//!
//! A file that ends before its end marker (JPEG EOI, PNG IEND) is refused as truncated. At
//! most one JPEG segment (64 KiB) or a few bytes of PNG framing are buffered.

use super::{MediaError, Sanitised};
use crate::model::MediaType;

const PNG_SIG: &[u8; 8] = b"\x89PNG\r\n\x1a\n";

pub struct ImageFilter {
    media: MediaType,
    buf: Vec<u8>,
    state: State,
    info: Sanitised,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the signature (JPEG SOI / PNG signature).
    Start,
    /// At a JPEG marker or a PNG chunk header.
    Header,
    /// Inside a PNG chunk's data + CRC: `left` bytes to pass (`keep`) or drop.
    PngChunk { left: u64, keep: bool, last: bool },
    /// Inside JPEG entropy-coded data.
    Scan,
    /// After JPEG EOI or PNG IEND: the rest is dropped.
    Done,
}

impl ImageFilter {
    pub fn new(media: MediaType) -> Self {
        ImageFilter {
            media,
            buf: Vec::new(),
            state: State::Start,
            info: Sanitised::default(),
        }
    }

    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), MediaError> {
        if self.state == State::Done {
            if !input.is_empty() {
                note(&mut self.info, "trailer");
            }
            return Ok(());
        }
        self.buf.extend_from_slice(input);
        let mut at = 0;
        loop {
            let progressed = match self.media {
                MediaType::Png => self.png_step(&mut at, out)?,
                _ => self.jpeg_step(&mut at, out)?,
            };
            if !progressed {
                break;
            }
        }
        self.buf.drain(..at);
        if self.state == State::Done && !self.buf.is_empty() {
            note(&mut self.info, "trailer");
            self.buf.clear();
        }
        Ok(())
    }

    pub fn finish(mut self, _out: &mut Vec<u8>) -> Result<Sanitised, MediaError> {
        if self.state != State::Done {
            let why = match self.media {
                MediaType::Png => "no IEND chunk",
                _ => "no end-of-image marker",
            };
            return Err(MediaError::truncated(self.media, why));
        }
        self.info.stripped.sort();
        Ok(self.info)
    }

    /// One JPEG step from `buf[*at..]`; false when more input is needed or the file is done.
    fn jpeg_step(&mut self, at: &mut usize, out: &mut Vec<u8>) -> Result<bool, MediaError> {
        let b = &self.buf[*at..];
        match self.state {
            State::Start => {
                if b.len() < 2 {
                    return Ok(false);
                }
                if b[..2] != [0xFF, 0xD8] {
                    return Err(MediaError::malformed(
                        self.media,
                        "no start-of-image marker",
                    ));
                }
                out.extend_from_slice(&b[..2]);
                *at += 2;
                self.state = State::Header;
                Ok(true)
            }
            State::Header => {
                // Fill bytes (0xFF) may precede a marker.
                let mut i = 0;
                while i + 1 < b.len() && b[i] == 0xFF && b[i + 1] == 0xFF {
                    i += 1;
                }
                if b.len() < i + 2 {
                    return Ok(false);
                }
                if b[i] != 0xFF {
                    return Err(MediaError::malformed(
                        self.media,
                        "a segment does not start with a marker",
                    ));
                }
                let marker = b[i + 1];
                match marker {
                    0xD9 => {
                        out.extend_from_slice(&[0xFF, 0xD9]);
                        *at += i + 2;
                        self.state = State::Done;
                        return Ok(false);
                    }
                    0xD0..=0xD7 | 0x01 => {
                        out.extend_from_slice(&b[i..i + 2]);
                        *at += i + 2;
                        return Ok(true);
                    }
                    _ => {}
                }
                if b.len() < i + 4 {
                    return Ok(false);
                }
                let len = usize::from(u16::from_be_bytes([b[i + 2], b[i + 3]]));
                if len < 2 {
                    return Err(MediaError::malformed(
                        self.media,
                        "a segment length below 2",
                    ));
                }
                if b.len() < i + 2 + len {
                    return Ok(false);
                }
                let seg = &b[i..i + 2 + len];
                let payload = &seg[4..];
                let keep = match marker {
                    0xE0 | 0xEE => true,
                    0xE2 => payload.starts_with(b"ICC_PROFILE\0"),
                    0xE1 => {
                        if payload.starts_with(b"Exif\0\0") {
                            let (o, gps) = exif_facts(&payload[6..]);
                            self.info.orientation = self.info.orientation.or(o);
                            note(&mut self.info, "exif");
                            if gps {
                                note(&mut self.info, "gps");
                            }
                        } else if payload.starts_with(b"http://ns.adobe.com/xap/1.0/") {
                            note(&mut self.info, "xmp");
                        } else {
                            note(&mut self.info, "app1");
                        }
                        false
                    }
                    0xED => {
                        note(&mut self.info, "iptc");
                        false
                    }
                    0xFE => {
                        note(&mut self.info, "comment");
                        false
                    }
                    0xE3..=0xEC | 0xEF => {
                        note(&mut self.info, "app-segment");
                        false
                    }
                    _ => true,
                };
                if matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC) {
                    if payload.len() < 5 {
                        return Err(MediaError::malformed(self.media, "a short frame header"));
                    }
                    self.info.height =
                        Some(u32::from(u16::from_be_bytes([payload[1], payload[2]])));
                    self.info.width = Some(u32::from(u16::from_be_bytes([payload[3], payload[4]])));
                }
                if keep {
                    out.extend_from_slice(seg);
                }
                *at += i + 2 + len;
                if marker == 0xDA {
                    self.state = State::Scan;
                }
                Ok(true)
            }
            State::Scan => {
                // Pass entropy-coded bytes up to the next real marker (not a stuffed 0xFF00 or
                // a restart marker).
                let mut i = 0;
                while i < b.len() {
                    if b[i] == 0xFF {
                        if i + 1 >= b.len() {
                            break;
                        }
                        let n = b[i + 1];
                        if n == 0x00 || (0xD0..=0xD7).contains(&n) {
                            i += 2;
                            continue;
                        }
                        out.extend_from_slice(&b[..i]);
                        *at += i;
                        self.state = State::Header;
                        return Ok(true);
                    }
                    i += 1;
                }
                out.extend_from_slice(&b[..i]);
                *at += i;
                Ok(false)
            }
            State::PngChunk { .. } | State::Done => Ok(false),
        }
    }

    fn png_step(&mut self, at: &mut usize, out: &mut Vec<u8>) -> Result<bool, MediaError> {
        let b = &self.buf[*at..];
        match self.state {
            State::Start => {
                if b.len() < 8 {
                    return Ok(false);
                }
                if &b[..8] != PNG_SIG {
                    return Err(MediaError::malformed(self.media, "bad signature"));
                }
                out.extend_from_slice(PNG_SIG);
                *at += 8;
                self.state = State::Header;
                Ok(true)
            }
            State::Header => {
                if b.len() < 8 {
                    return Ok(false);
                }
                let len = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
                if len > 0x7FFF_FFFF {
                    return Err(MediaError::malformed(
                        self.media,
                        "a chunk length over 2^31",
                    ));
                }
                let ty: [u8; 4] = [b[4], b[5], b[6], b[7]];
                if !ty.iter().all(u8::is_ascii_alphabetic) {
                    return Err(MediaError::malformed(
                        self.media,
                        "a chunk type is not ASCII",
                    ));
                }
                if &ty == b"IHDR" {
                    if b.len() < 16 {
                        return Ok(false);
                    }
                    self.info.width = Some(u32::from_be_bytes([b[8], b[9], b[10], b[11]]));
                    self.info.height = Some(u32::from_be_bytes([b[12], b[13], b[14], b[15]]));
                }
                let keep = match &ty {
                    b"eXIf" => {
                        note(&mut self.info, "exif");
                        false
                    }
                    b"tEXt" | b"zTXt" | b"iTXt" => {
                        note(&mut self.info, "text");
                        false
                    }
                    b"tIME" => {
                        note(&mut self.info, "time");
                        false
                    }
                    _ => true,
                };
                if keep {
                    out.extend_from_slice(&b[..8]);
                }
                *at += 8;
                self.state = State::PngChunk {
                    left: u64::from(len) + 4,
                    keep,
                    last: &ty == b"IEND",
                };
                Ok(true)
            }
            State::PngChunk { left, keep, last } => {
                if b.is_empty() {
                    return Ok(false);
                }
                let n = usize::try_from(left).unwrap_or(usize::MAX).min(b.len());
                if keep {
                    out.extend_from_slice(&b[..n]);
                }
                *at += n;
                let left = left - n as u64;
                self.state = match (left, last) {
                    (0, true) => State::Done,
                    (0, false) => State::Header,
                    _ => State::PngChunk { left, keep, last },
                };
                Ok(self.state == State::Header)
            }
            State::Scan | State::Done => Ok(false),
        }
    }
}

fn note(info: &mut Sanitised, what: &str) {
    if !info.stripped.iter().any(|s| s == what) {
        info.stripped.push(what.to_string());
    }
}

/// Orientation (tag 0x0112 of IFD0) and whether a GPS IFD pointer (0x8825) is present, from a
/// TIFF-structured EXIF block. Anything malformed yields nothing: the block is dropped anyway.
fn exif_facts(tiff: &[u8]) -> (Option<u8>, bool) {
    let rd16 = |le: bool, b: &[u8]| {
        if le {
            u16::from_le_bytes([b[0], b[1]])
        } else {
            u16::from_be_bytes([b[0], b[1]])
        }
    };
    if tiff.len() < 8 {
        return (None, false);
    }
    let le = match &tiff[..2] {
        b"II" => true,
        b"MM" => false,
        _ => return (None, false),
    };
    let off = if le {
        u32::from_le_bytes([tiff[4], tiff[5], tiff[6], tiff[7]])
    } else {
        u32::from_be_bytes([tiff[4], tiff[5], tiff[6], tiff[7]])
    } as usize;
    let Some(count) = tiff.get(off..off + 2).map(|b| rd16(le, b)) else {
        return (None, false);
    };
    let (mut orientation, mut gps) = (None, false);
    for k in 0..usize::from(count) {
        let Some(e) = tiff.get(off + 2 + k * 12..off + 14 + k * 12) else {
            break;
        };
        match rd16(le, &e[0..2]) {
            0x0112 => {
                let v = rd16(le, &e[8..10]);
                if (1..=8).contains(&v) {
                    orientation = Some(v as u8);
                }
            }
            0x8825 => gps = true,
            _ => {}
        }
    }
    (orientation, gps)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny JPEG skeleton: SOI, APP0, APP1 EXIF (orientation 6, GPS pointer), COM, SOF0,
    /// SOS with stuffed bytes and a restart marker, EOI, then a trailer.
    fn jpeg() -> Vec<u8> {
        let mut j = vec![0xFF, 0xD8];
        j.extend_from_slice(&[0xFF, 0xE0, 0, 7, b'J', b'F', b'I', b'F', 0]);
        let mut tiff = b"MM\0*\0\0\0\x08".to_vec();
        tiff.extend_from_slice(&[0, 2]);
        tiff.extend_from_slice(&[0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, 6, 0, 0]);
        tiff.extend_from_slice(&[0x88, 0x25, 0, 4, 0, 0, 0, 1, 0, 0, 0, 0x40]);
        tiff.extend_from_slice(&[0, 0, 0, 0]);
        let mut app1 = b"Exif\0\0".to_vec();
        app1.extend_from_slice(&tiff);
        j.extend_from_slice(&[0xFF, 0xE1]);
        j.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
        j.extend_from_slice(&app1);
        j.extend_from_slice(&[0xFF, 0xFE, 0, 5, b'h', b'i', b'!']);
        j.extend_from_slice(&[0xFF, 0xC0, 0, 11, 8, 0, 48, 0, 64, 1, 1, 0x11, 0]);
        j.extend_from_slice(&[0xFF, 0xDA, 0, 8, 1, 1, 0, 0, 0x3F, 0]);
        j.extend_from_slice(&[0x12, 0xFF, 0x00, 0x34, 0xFF, 0xD0, 0x56]);
        j.extend_from_slice(&[0xFF, 0xD9]);
        j.extend_from_slice(b"SAMSUNG TRAILER serial 1234");
        j
    }

    fn run(
        media: MediaType,
        data: &[u8],
        piece: usize,
    ) -> Result<(Vec<u8>, Sanitised), MediaError> {
        let mut f = ImageFilter::new(media);
        let mut out = Vec::new();
        for c in data.chunks(piece) {
            f.push(c, &mut out)?;
        }
        let s = f.finish(&mut out)?;
        Ok((out, s))
    }

    #[test]
    fn jpeg_metadata_is_dropped_whatever_the_piece_size() {
        let want = {
            let mut w = vec![0xFF, 0xD8, 0xFF, 0xE0, 0, 7, b'J', b'F', b'I', b'F', 0];
            w.extend_from_slice(&[0xFF, 0xC0, 0, 11, 8, 0, 48, 0, 64, 1, 1, 0x11, 0]);
            w.extend_from_slice(&[0xFF, 0xDA, 0, 8, 1, 1, 0, 0, 0x3F, 0]);
            w.extend_from_slice(&[0x12, 0xFF, 0x00, 0x34, 0xFF, 0xD0, 0x56, 0xFF, 0xD9]);
            w
        };
        for piece in [1, 2, 3, 7, 64, 4096] {
            let (out, s) = run(MediaType::Jpeg, &jpeg(), piece).unwrap();
            assert_eq!(out, want, "piece {piece}");
            assert_eq!(s.orientation, Some(6));
            assert_eq!((s.width, s.height), (Some(64), Some(48)));
            assert_eq!(s.stripped, ["comment", "exif", "gps", "trailer"]);
        }
    }

    #[test]
    fn a_jpeg_without_its_end_is_truncated() {
        let j = jpeg();
        let cut = j.len() - 40;
        let e = run(MediaType::Jpeg, &j[..cut], 5).unwrap_err();
        assert_eq!(e.code(), "TRUNCATED_FILE");
        assert!(e.to_string().contains("end-of-image"), "{e}");
    }

    fn png_chunk(ty: &[u8; 4], data: &[u8]) -> Vec<u8> {
        let mut c = (data.len() as u32).to_be_bytes().to_vec();
        c.extend_from_slice(ty);
        c.extend_from_slice(data);
        c.extend_from_slice(&[1, 2, 3, 4]);
        c
    }

    #[test]
    fn png_text_exif_and_time_chunks_are_dropped() {
        let ihdr = [0, 0, 0, 9, 0, 0, 0, 5, 8, 2, 0, 0, 0];
        let mut p = PNG_SIG.to_vec();
        p.extend(png_chunk(b"IHDR", &ihdr));
        p.extend(png_chunk(b"tEXt", b"Author\0Dr Who"));
        p.extend(png_chunk(b"eXIf", b"MM\0*\0\0\0\x08\0\0"));
        p.extend(png_chunk(b"IDAT", &[7; 300]));
        p.extend(png_chunk(b"tIME", &[7; 7]));
        p.extend(png_chunk(b"IEND", &[]));
        let mut want = PNG_SIG.to_vec();
        want.extend(png_chunk(b"IHDR", &ihdr));
        want.extend(png_chunk(b"IDAT", &[7; 300]));
        want.extend(png_chunk(b"IEND", &[]));
        for piece in [1, 5, 13, 1000] {
            let (out, s) = run(MediaType::Png, &p, piece).unwrap();
            assert_eq!(out, want, "piece {piece}");
            assert_eq!((s.width, s.height), (Some(9), Some(5)));
            assert_eq!(s.stripped, ["exif", "text", "time"]);
        }
        let e = run(MediaType::Png, &p[..p.len() - 12], 9).unwrap_err();
        assert_eq!(e.code(), "TRUNCATED_FILE");
    }
}
