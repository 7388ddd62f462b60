//! The NEMSIS export's XML writer: indented elements, escaped text, NOT values, date-times.

use std::fmt::Write;

pub(super) const NOT_APPLICABLE: &str = "7701001";
pub(super) const NOT_RECORDED: &str = "7701003";
pub(super) const NO: &str = "9923001";
pub(super) const YES: &str = "9923003";

/// A small XML writer: indented elements, escaped text.
pub(super) struct Xml {
    pub(super) out: String,
    pub(super) depth: usize,
}

impl Xml {
    pub(super) fn open(&mut self, tag: &str) {
        self.indent();
        let _ = writeln!(self.out, "<{tag}>");
        self.depth += 1;
    }
    pub(super) fn close(&mut self, tag: &str) {
        self.depth -= 1;
        self.indent();
        let _ = writeln!(self.out, "</{tag}>");
    }
    pub(super) fn indent(&mut self) {
        for _ in 0..self.depth {
            self.out.push_str("  ");
        }
    }
    pub(super) fn val(&mut self, tag: &str, v: impl std::fmt::Display) {
        self.indent();
        let _ = writeln!(self.out, "<{tag}>{}</{tag}>", esc(&v.to_string()));
    }
    /// A nil element with a NOT value.
    pub(super) fn nv(&mut self, tag: &str, nv: &str) {
        self.indent();
        let _ = writeln!(self.out, "<{tag} xsi:nil=\"true\" NV=\"{nv}\"/>");
    }
    /// Several nil elements with the same NOT value, in order.
    pub(super) fn nvs(&mut self, tags: &[&str], nv: &str) {
        for tag in tags {
            self.nv(tag, nv);
        }
    }
    /// The value, or the NOT value when absent.
    pub(super) fn opt(&mut self, tag: &str, v: Option<impl std::fmt::Display>, nv: &str) {
        match v {
            Some(v) => self.val(tag, v),
            None => self.nv(tag, nv),
        }
    }
}

pub(super) fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// NEMSIS date-time (UTC offset written out, whole seconds).
pub(super) fn dt(ms: i64) -> String {
    let iso = crate::model::iso8601_ms(ms);
    format!("{}+00:00", &iso[..19])
}
