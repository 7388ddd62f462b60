//! Thumbnails of photos for the tablet's attachment list: at most [`MAX_SIDE`] pixels on the
//! longer side, JPEG. A JPEG is decoded with DCT scaling (at 1/2 to 1/8 of its size, so a
//! 12-megapixel photo never exists decoded at full size) and a PNG row by row; either is then
//! box-filtered down. The only importer of `jpeg-decoder`, `jpeg-encoder` and `png`.

use crate::model::MediaType;

/// Longest side of a thumbnail, in pixels.
pub const MAX_SIDE: u32 = 320;
/// Images with more pixels than this are not thumbnailed (the viewer still shows them).
pub const MAX_PIXELS: u64 = 50_000_000;

/// A thumbnail, or why none was made (an undecodable image is still stored and viewable).
pub fn thumbnail(media: MediaType, bytes: &[u8]) -> Result<Vec<u8>, String> {
    let (w, h, rgb) = match media {
        MediaType::Jpeg => jpeg_rgb(bytes)?,
        MediaType::Png => png_rgb(bytes)?,
        _ => return Err("not an image".into()),
    };
    let mut out = Vec::new();
    let enc = jpeg_encoder::Encoder::new(&mut out, 80);
    enc.encode(&rgb, w as u16, h as u16, jpeg_encoder::ColorType::Rgb)
        .map_err(|e| e.to_string())?;
    Ok(out)
}

/// Target size for `w`×`h` fitting in MAX_SIDE.
fn fit(w: u32, h: u32) -> (u32, u32) {
    let m = w.max(h).max(1);
    if m <= MAX_SIDE {
        return (w.max(1), h.max(1));
    }
    (
        (u64::from(w) * u64::from(MAX_SIDE) / u64::from(m)).max(1) as u32,
        (u64::from(h) * u64::from(MAX_SIDE) / u64::from(m)).max(1) as u32,
    )
}

/// Box filter accumulating source rows into destination rows.
struct Shrink {
    sw: u32,
    sh: u32,
    dw: u32,
    dh: u32,
    acc: Vec<u64>,
    cnt: Vec<u32>,
}

impl Shrink {
    fn new(sw: u32, sh: u32) -> Self {
        let (dw, dh) = fit(sw, sh);
        let n = (dw * dh) as usize;
        Shrink {
            sw,
            sh,
            dw,
            dh,
            acc: vec![0; n * 3],
            cnt: vec![0; n],
        }
    }

    /// Adds source row `y` given as RGB triples.
    fn row(&mut self, y: u32, rgb: &[u8]) {
        let dy = (u64::from(y) * u64::from(self.dh) / u64::from(self.sh)) as u32;
        for x in 0..self.sw.min((rgb.len() / 3) as u32) {
            let dx = (u64::from(x) * u64::from(self.dw) / u64::from(self.sw)) as u32;
            let i = (dy * self.dw + dx) as usize;
            let p = &rgb[x as usize * 3..x as usize * 3 + 3];
            for (acc, v) in self.acc[i * 3..i * 3 + 3].iter_mut().zip(p) {
                *acc += u64::from(*v);
            }
            self.cnt[i] += 1;
        }
    }

    fn finish(self) -> (u32, u32, Vec<u8>) {
        let mut out = vec![0u8; self.acc.len()];
        for (i, n) in self.cnt.iter().enumerate() {
            for c in 0..3 {
                out[i * 3 + c] = (self.acc[i * 3 + c] / u64::from((*n).max(1))) as u8;
            }
        }
        (self.dw, self.dh, out)
    }
}

fn jpeg_rgb(bytes: &[u8]) -> Result<(u32, u32, Vec<u8>), String> {
    use jpeg_decoder::{Decoder, PixelFormat};
    let mut d = Decoder::new(bytes);
    d.read_info().map_err(|e| e.to_string())?;
    let info = d.info().ok_or("no image header")?;
    if u64::from(info.width) * u64::from(info.height) > MAX_PIXELS {
        return Err("too many pixels".into());
    }
    let side = MAX_SIDE as u16;
    let (w, h) = d.scale(side, side).map_err(|e| e.to_string())?;
    let px = d.decode().map_err(|e| e.to_string())?;
    let fmt = d.info().ok_or("no image header")?.pixel_format;
    let (w, h) = (u32::from(w), u32::from(h));
    let mut s = Shrink::new(w, h);
    let mut line = vec![0u8; w as usize * 3];
    for y in 0..h {
        let at = (y * w) as usize;
        for x in 0..w as usize {
            let rgb = match fmt {
                PixelFormat::L8 => [px[at + x]; 3],
                PixelFormat::L16 => [px[(at + x) * 2]; 3],
                PixelFormat::RGB24 => {
                    let p = &px[(at + x) * 3..(at + x) * 3 + 3];
                    [p[0], p[1], p[2]]
                }
                PixelFormat::CMYK32 => {
                    let p = &px[(at + x) * 4..(at + x) * 4 + 4];
                    let k = u16::from(p[3]);
                    let f = |c: u8| ((u16::from(c) * k) / 255) as u8;
                    [f(p[0]), f(p[1]), f(p[2])]
                }
            };
            line[x * 3..x * 3 + 3].copy_from_slice(&rgb);
        }
        s.row(y, &line);
    }
    Ok(s.finish())
}

fn png_rgb(bytes: &[u8]) -> Result<(u32, u32, Vec<u8>), String> {
    use png::{ColorType, Transformations};
    let mut d = png::Decoder::new(std::io::Cursor::new(bytes));
    d.set_transformations(Transformations::EXPAND | Transformations::STRIP_16);
    let mut r = d.read_info().map_err(|e| e.to_string())?;
    let (w, h, interlaced) = {
        let i = r.info();
        (i.width, i.height, i.interlaced)
    };
    if interlaced {
        return Err("interlaced PNG".into());
    }
    if u64::from(w) * u64::from(h) > MAX_PIXELS {
        return Err("too many pixels".into());
    }
    let (ct, _) = r.output_color_type();
    let bpp = match ct {
        ColorType::Grayscale => 1,
        ColorType::GrayscaleAlpha => 2,
        ColorType::Rgb => 3,
        ColorType::Rgba => 4,
        ColorType::Indexed => return Err("indexed colour after expansion".into()),
    };
    let mut s = Shrink::new(w, h);
    let mut line = vec![0u8; w as usize * 3];
    let mut y = 0;
    while let Some(row) = r.next_row().map_err(|e| e.to_string())? {
        let d = row.data();
        for x in 0..w as usize {
            let p = &d[x * bpp..x * bpp + bpp];
            let rgb = if bpp < 3 {
                [p[0]; 3]
            } else {
                [p[0], p[1], p[2]]
            };
            line[x * 3..x * 3 + 3].copy_from_slice(&rgb);
        }
        s.row(y, &line);
        y += 1;
    }
    Ok(s.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_photo_becomes_a_small_jpeg() {
        let (w, h) = (1000u16, 600u16);
        let rgb: Vec<u8> = (0..u32::from(w) * u32::from(h))
            .flat_map(|i| [(i % 251) as u8, 128, 64])
            .collect();
        let mut src = Vec::new();
        jpeg_encoder::Encoder::new(&mut src, 90)
            .encode(&rgb, w, h, jpeg_encoder::ColorType::Rgb)
            .unwrap();
        let t = thumbnail(MediaType::Jpeg, &src).unwrap();
        let mut d = jpeg_decoder::Decoder::new(&t[..]);
        d.read_info().unwrap();
        let i = d.info().unwrap();
        assert_eq!((i.width, i.height), (320, 192));
        assert!(t.len() < src.len() / 4);
        assert_eq!(fit(100, 50), (100, 50));
        assert!(thumbnail(MediaType::Png, b"\x89PNG\r\n\x1a\nnope").is_err());
    }
}
