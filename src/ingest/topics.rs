//! Topic names of Contract A.

/// Vitals from every device.
pub const VITALS_FILTER: &str = "hema3n/v1/devices/+/vitals";
/// Presence (retained `online` / last-will `offline`) of every device.
pub const STATUS_FILTER: &str = "hema3n/v1/devices/+/status";

/// What a topic is.
#[derive(Debug, PartialEq, Eq)]
pub enum Topic<'a> {
    Vitals(&'a str),
    Status(&'a str),
    Other,
}

/// Classifies a topic; the device segment is returned unvalidated.
pub fn parse(topic: &str) -> Topic<'_> {
    let Some(rest) = topic.strip_prefix("hema3n/v1/devices/") else {
        return Topic::Other;
    };
    match rest.split_once('/') {
        Some((dev, "vitals")) => Topic::Vitals(dev),
        Some((dev, "status")) => Topic::Status(dev),
        _ => Topic::Other,
    }
}

pub fn vitals(device: &str) -> String {
    format!("hema3n/v1/devices/{device}/vitals")
}

pub fn status(device: &str) -> String {
    format!("hema3n/v1/devices/{device}/status")
}

pub fn rejects(device: &str) -> String {
    format!("hema3n/v1/devices/{device}/rejects")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_classify() {
        assert_eq!(
            parse("hema3n/v1/devices/mon-1/vitals"),
            Topic::Vitals("mon-1")
        );
        assert_eq!(
            parse("hema3n/v1/devices/mon-1/status"),
            Topic::Status("mon-1")
        );
        assert_eq!(parse("hema3n/v1/devices/mon-1/x/vitals"), Topic::Other);
        assert_eq!(parse("hema3n/v2/devices/mon-1/vitals"), Topic::Other);
        assert_eq!(parse(&vitals("a")), Topic::Vitals("a"));
    }
}
