//! The handoff document as a PDF: laid out here into pages of drawing operations (pure, tested),
//! then drawn with krilla — the only importer of krilla and of the embedded DejaVu Sans fonts
//! (subset into the file: no system font, no browser, no network). The vitals trend is drawn as
//! vector lines. US Letter, one page for a typical call, more when the record is long.

use krilla::Document;
use krilla::color::rgb;
use krilla::geom::{PathBuilder, Point};
use krilla::metadata::Metadata;
use krilla::page::PageSettings;
use krilla::paint::{Fill, Stroke};
use krilla::text::{Font, TextDirection};

use super::{Format, Handoff, clock, elapsed};

const W: f32 = 612.0;
const H: f32 = 792.0;
const MARGIN: f32 = 40.0;
/// Room kept at the bottom of each page for the footer.
const FOOTER: f32 = 30.0;
/// Average advance of DejaVu Sans in em, used to wrap lines (slightly generous, so a wrapped
/// line never runs past the margin).
const EM_ADVANCE: f32 = 0.56;

/// Colours of the trend lines, in [`super::TREND`] order.
const SERIES_RGB: [(u8, u8, u8); 5] = [
    (200, 30, 45),
    (20, 90, 200),
    (30, 140, 60),
    (150, 60, 170),
    (200, 120, 0),
];

/// One drawing operation, in points from the top-left corner.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Text {
        x: f32,
        y: f32,
        size: f32,
        bold: bool,
        rgb: (u8, u8, u8),
        text: String,
    },
    Line {
        points: Vec<(f32, f32)>,
        width: f32,
        rgb: (u8, u8, u8),
    },
    Rect {
        x: f32,
        y: f32,
        w: f32,
        h: f32,
        rgb: (u8, u8, u8),
    },
}

/// Pages of operations.
#[derive(Debug, Default)]
pub struct Layout {
    pub pages: Vec<Vec<Op>>,
    y: f32,
}

impl Layout {
    fn page(&mut self) -> &mut Vec<Op> {
        if self.pages.is_empty() {
            self.pages.push(vec![]);
            self.y = MARGIN;
        }
        self.pages.last_mut().expect("a page")
    }
    /// Makes room for `h` points, starting a new page when needed.
    fn room(&mut self, h: f32) {
        self.page();
        if self.y + h > H - MARGIN - FOOTER {
            self.pages.push(vec![]);
            self.y = MARGIN;
        }
    }
    fn text(&mut self, x: f32, size: f32, bold: bool, rgb: (u8, u8, u8), text: &str) {
        let width = W - MARGIN - x;
        for line in wrap(text, width, size) {
            self.room(size * 1.3);
            let y = self.y + size;
            self.page().push(Op::Text {
                x,
                y,
                size,
                bold,
                rgb,
                text: line,
            });
            self.y += size * 1.3;
        }
    }
    fn gap(&mut self, h: f32) {
        self.page();
        self.y += h;
    }
    fn rule(&mut self) {
        self.room(6.0);
        let y = self.y + 2.0;
        self.page().push(Op::Line {
            points: vec![(MARGIN, y), (W - MARGIN, y)],
            width: 0.6,
            rgb: (150, 150, 150),
        });
        self.y += 6.0;
    }
}

/// Splits `text` into lines that fit `width` points at `size`.
pub fn wrap(text: &str, width: f32, size: f32) -> Vec<String> {
    let max = ((width / (size * EM_ADVANCE)).floor() as usize).max(8);
    let mut out = vec![];
    let mut cur = String::new();
    for word in text.split_whitespace() {
        let mut word = word.to_string();
        while word.chars().count() > max {
            let head: String = word.chars().take(max).collect();
            word = word.chars().skip(max).collect();
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            out.push(head);
        }
        if !cur.is_empty() && cur.chars().count() + 1 + word.chars().count() > max {
            out.push(std::mem::take(&mut cur));
        }
        if !cur.is_empty() {
            cur.push(' ');
        }
        cur.push_str(&word);
    }
    if !cur.is_empty() || out.is_empty() {
        out.push(cur);
    }
    out
}

const INK: (u8, u8, u8) = (20, 20, 20);
const MUTED: (u8, u8, u8) = (90, 90, 90);
const ALERT: (u8, u8, u8) = (180, 20, 30);

/// Lays out the handoff in `format`, generated at `now_ms`.
pub fn layout(h: &Handoff, format: Format, now_ms: i64) -> Layout {
    let mut l = Layout::default();
    let title = match format {
        Format::Mist => "Hospital handoff \u{2014} MIST (trauma)",
        Format::Sbar => "Hospital handoff \u{2014} SBAR (medical)",
    };
    l.text(MARGIN, 18.0, true, INK, title);
    l.text(MARGIN, 14.0, true, INK, &h.patient);
    if let Some(c) = &h.chief_complaint {
        l.text(MARGIN, 11.0, false, INK, &format!("Chief complaint: {c}"));
    }
    if let Some(t) = &h.triage {
        let mut s = format!("ESI {}", t.esi);
        if let Some(n) = t.news2 {
            s.push_str(&format!("   NEWS2 {n}"));
        }
        s.push_str(&format!(
            "   (triage at {}, {})",
            clock(t.at_ms),
            t.decider.replace('_', " ")
        ));
        l.text(MARGIN, 13.0, true, if t.esi <= 2 { ALERT } else { INK }, &s);
        for r in &t.reasons {
            l.text(MARGIN + 12.0, 9.5, false, INK, &format!("\u{2022} {r}"));
        }
        if let Some(n) = &t.model_note {
            l.text(MARGIN + 12.0, 8.5, false, MUTED, n);
        }
    }
    if !h.alerts.is_empty() {
        l.text(
            MARGIN,
            12.0,
            true,
            ALERT,
            &format!("TIME-CRITICAL: {}", h.alerts.join(", ")),
        );
    }
    if let Some(d) = &h.destination {
        let eta = h
            .eta_ms
            .map(|t| format!(", ETA {}", clock(t)))
            .unwrap_or_default();
        l.text(MARGIN, 10.5, false, INK, &format!("Destination: {d}{eta}"));
    }
    l.text(
        MARGIN,
        10.5,
        true,
        INK,
        &format!("Allergies: {}", h.allergies),
    );
    l.rule();

    for b in h.blocks(format) {
        l.room(40.0);
        l.text(
            MARGIN,
            12.5,
            true,
            INK,
            &format!("{}  {}", b.letter, b.title),
        );
        for line in &b.lines {
            l.text(MARGIN + 18.0, 10.0, false, INK, line);
        }
        l.gap(4.0);
    }
    l.rule();

    if !h.trend.is_empty() {
        chart(&mut l, h);
    }

    // Interventions and medications are in the blocks (Treatment, Assessment) with their times;
    // the call's times run as one wrapped line.
    if !h.times.is_empty() {
        l.room(40.0);
        l.text(MARGIN, 12.0, true, INK, "Times");
        let line: Vec<String> = h
            .times
            .iter()
            .map(|t| {
                format!(
                    "{} {} ({})",
                    t.label,
                    clock(t.at_ms),
                    elapsed(h.started_at_ms, t.at_ms)
                )
            })
            .collect();
        l.text(MARGIN + 8.0, 9.5, false, INK, &line.join("  \u{b7}  "));
        l.gap(4.0);
    }
    l.rule();
    let from = if h.transfer.from.is_empty() {
        "the crew".to_string()
    } else {
        h.transfer.from.join(", ")
    };
    let to = match (&h.transfer.to, &h.transfer.to_role) {
        (Some(n), Some(r)) => format!("{n} ({r})"),
        (Some(n), None) => n.clone(),
        _ => "\u{2014} (not yet handed over)".to_string(),
    };
    let at = h
        .transfer
        .at_ms
        .map(|t| format!(" at {} ({})", clock(t), elapsed(h.started_at_ms, t)))
        .unwrap_or_default();
    l.text(
        MARGIN,
        11.0,
        true,
        INK,
        &format!("Handed over by {from} to {to}{at}"),
    );

    let n = l.pages.len();
    for (i, p) in l.pages.iter_mut().enumerate() {
        p.push(Op::Text {
            x: MARGIN,
            y: H - MARGIN + 8.0,
            size: 7.5,
            bold: false,
            rgb: MUTED,
            text: format!(
                "HEMA3N Edge handoff \u{b7} case {} \u{b7} generated {} \u{b7} contains PHI \u{b7} page {} of {n}",
                h.case_id,
                clock(now_ms),
                i + 1
            ),
        });
    }
    l
}

/// The trend chart: one axis 0–max for every key vital (they share a scale of tens to a couple
/// of hundred), a line per vital with a legend, time along the bottom.
fn chart(l: &mut Layout, h: &Handoff) {
    let (ch, legend) = (150.0, 14.0);
    l.room(ch + legend + 40.0);
    l.text(MARGIN, 12.0, true, INK, "Vitals trend");
    let top = l.y + 4.0;
    let (x0, x1) = (MARGIN + 28.0, W - MARGIN);
    let (y0, y1) = (top + ch, top);
    let t_min = h
        .trend
        .iter()
        .flat_map(|s| s.points.first())
        .map(|p| p.0)
        .min()
        .unwrap_or(0);
    let t_max = h
        .trend
        .iter()
        .flat_map(|s| s.points.last())
        .map(|p| p.0)
        .max()
        .unwrap_or(0);
    let v_max = h
        .trend
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(100.0_f64, f64::max);
    let v_top = ((v_max / 50.0).ceil() * 50.0).max(100.0);
    let span = (t_max - t_min).max(60_000) as f64;
    let px = |t: i64| x0 + ((t - t_min) as f64 / span) as f32 * (x1 - x0);
    let py = |v: f64| y0 - (v / v_top) as f32 * (y0 - y1);
    let ops = l.page();
    let mut grid = 0.0;
    while grid <= v_top {
        let y = py(grid);
        ops.push(Op::Line {
            points: vec![(x0, y), (x1, y)],
            width: 0.3,
            rgb: (200, 200, 200),
        });
        ops.push(Op::Text {
            x: MARGIN,
            y: y + 3.0,
            size: 7.0,
            bold: false,
            rgb: MUTED,
            text: format!("{grid:.0}"),
        });
        grid += 50.0;
    }
    ops.push(Op::Line {
        points: vec![(x0, y1), (x0, y0), (x1, y0)],
        width: 0.8,
        rgb: MUTED,
    });
    for (t, anchor) in [(t_min, x0), (t_max, x1 - 60.0)] {
        ops.push(Op::Text {
            x: anchor,
            y: y0 + 10.0,
            size: 7.0,
            bold: false,
            rgb: MUTED,
            text: format!("{} ({})", clock(t), elapsed(h.started_at_ms, t)),
        });
    }
    let mut lx = x0;
    for s in &h.trend {
        let i = super::TREND.iter().position(|c| *c == s.code).unwrap_or(0);
        let rgb = SERIES_RGB[i % SERIES_RGB.len()];
        // At most one point per horizontal point of the chart: a long transport stays small.
        let step = (s.points.len() / (x1 - x0) as usize).max(1);
        let points: Vec<(f32, f32)> = s
            .points
            .iter()
            .step_by(step)
            .map(|p| (px(p.0), py(p.1)))
            .collect();
        if points.len() == 1 {
            let (x, y) = points[0];
            ops.push(Op::Rect {
                x: x - 1.5,
                y: y - 1.5,
                w: 3.0,
                h: 3.0,
                rgb,
            });
        } else {
            ops.push(Op::Line {
                points,
                width: 1.4,
                rgb,
            });
        }
        ops.push(Op::Rect {
            x: lx,
            y: y0 + 16.0,
            w: 10.0,
            h: 3.0,
            rgb,
        });
        let label = format!("{} ({})", s.label, s.unit);
        ops.push(Op::Text {
            x: lx + 13.0,
            y: y0 + 20.0,
            size: 8.0,
            bold: false,
            rgb: INK,
            text: label.clone(),
        });
        lx += 24.0 + label.chars().count() as f32 * 8.0 * EM_ADVANCE;
    }
    l.y = y0 + legend + 16.0;
}

/// The handoff document of a case as of `now_ms`: in `format`, or the structure the record
/// suggests (what the tablet, the CLI and the case bundle hand out).
pub fn document(
    x: &crate::model::CaseExport,
    format: Option<Format>,
    now_ms: i64,
) -> Result<Vec<u8>, String> {
    let h = super::build(x, now_ms);
    render(&h, format.unwrap_or(h.suggested), now_ms)
}

/// What a disclosure of the document is audited as (`handoff-pdf-mist`, `…-suggested`).
pub fn disclosure(format: Option<Format>) -> String {
    format!(
        "handoff-pdf-{}",
        format.map(Format::as_str).unwrap_or("suggested")
    )
}

/// The handoff as a PDF document (fonts embedded and subset).
pub fn render(h: &Handoff, format: Format, now_ms: i64) -> Result<Vec<u8>, String> {
    let regular = Font::new(dejavu::sans::regular().into(), 0).ok_or("embedded font")?;
    let bold = Font::new(dejavu::sans::bold().into(), 0).ok_or("embedded bold font")?;
    let mut doc = Document::new();
    doc.set_metadata(
        Metadata::new()
            .title(format!("Hospital handoff {}", h.case_id))
            .creator("HEMA3N Edge".to_string())
            .producer(format!("hema3n-edge {}", env!("CARGO_PKG_VERSION"))),
    );
    for ops in layout(h, format, now_ms).pages {
        let mut page = doc.start_page_with(PageSettings::from_wh(W, H).ok_or("page size")?);
        let mut s = page.surface();
        for op in ops {
            match op {
                Op::Text {
                    x,
                    y,
                    size,
                    bold: b,
                    rgb: (r, g, bl),
                    text,
                } => {
                    s.set_fill(Some(Fill {
                        paint: rgb::Color::new(r, g, bl).into(),
                        ..Fill::default()
                    }));
                    let font = if b { bold.clone() } else { regular.clone() };
                    s.draw_text(
                        Point::from_xy(x, y),
                        font,
                        size,
                        &text,
                        false,
                        TextDirection::Auto,
                    );
                }
                Op::Line {
                    points,
                    width,
                    rgb: (r, g, b),
                } => {
                    let mut pb = PathBuilder::new();
                    for (i, (x, y)) in points.iter().enumerate() {
                        if i == 0 {
                            pb.move_to(*x, *y);
                        } else {
                            pb.line_to(*x, *y);
                        }
                    }
                    if let Some(path) = pb.finish() {
                        s.set_fill(None);
                        s.set_stroke(Some(Stroke {
                            paint: rgb::Color::new(r, g, b).into(),
                            width,
                            ..Stroke::default()
                        }));
                        s.draw_path(&path);
                        s.set_stroke(None);
                    }
                }
                Op::Rect {
                    x,
                    y,
                    w,
                    h,
                    rgb: (r, g, b),
                } => {
                    let mut pb = PathBuilder::new();
                    pb.move_to(x, y);
                    pb.line_to(x + w, y);
                    pb.line_to(x + w, y + h);
                    pb.line_to(x, y + h);
                    pb.close();
                    if let Some(path) = pb.finish() {
                        s.set_fill(Some(Fill {
                            paint: rgb::Color::new(r, g, b).into(),
                            ..Fill::default()
                        }));
                        s.draw_path(&path);
                    }
                }
            }
        }
        s.finish();
        page.finish();
    }
    doc.finish().map_err(|e| format!("{e:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapping_keeps_every_word_and_the_width() {
        let t = "Aspirin 324 mg PO, response: improved — Sam Medic; then a word that is far too long: Pneumonoultramicroscopicsilicovolcanoconiosis";
        let lines = wrap(t, 200.0, 10.0);
        let max = (200.0 / (10.0 * EM_ADVANCE)) as usize;
        assert!(lines.len() > 2, "{lines:?}");
        assert!(lines.iter().all(|l| l.chars().count() <= max), "{lines:?}");
        let joined: String = lines.concat().split_whitespace().collect();
        let orig: String = t.split_whitespace().collect();
        assert_eq!(joined, orig);
    }
}
