//! HMAC blind indexes: equality search over encrypted fields without decrypting them.
//!
//! `index = HMAC-SHA256(index_key, "hema3n-bi/v1" 0 field 0 territory 0 normalised)[..16]`.
//! Normalisation makes "O'Brien", "o brien" and "OBRIEN" one term, and accented Latin letters
//! match their base letters. Territory is part of the input so that the same name in two
//! territories gives unrelated index values.

use super::Mac;

/// Which normalisation and domain separation a blind index uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlindField {
    LastName,
    DateOfBirth,
    Mrn,
}

impl BlindField {
    fn label(self) -> &'static str {
        match self {
            BlindField::LastName => "last_name",
            BlindField::DateOfBirth => "date_of_birth",
            BlindField::Mrn => "mrn",
        }
    }

    /// The normalised form of a search term, or `None` when nothing searchable remains.
    pub fn normalise(self, value: &str) -> Option<String> {
        let out: String = match self {
            BlindField::LastName => value
                .chars()
                .flat_map(char::to_lowercase)
                .map(fold_latin)
                .filter(|c| c.is_alphanumeric())
                .collect(),
            BlindField::DateOfBirth => value.trim().to_string(),
            BlindField::Mrn => value
                .chars()
                .filter(|c| c.is_ascii_alphanumeric())
                .map(|c| c.to_ascii_uppercase())
                .collect(),
        };
        (!out.is_empty()).then_some(out)
    }
}

fn fold_latin(c: char) -> char {
    match c {
        'à' | 'á' | 'â' | 'ã' | 'ä' | 'å' | 'ā' => 'a',
        'ç' | 'ć' | 'č' => 'c',
        'è' | 'é' | 'ê' | 'ë' | 'ē' | 'ę' | 'ě' => 'e',
        'ì' | 'í' | 'î' | 'ï' | 'ī' => 'i',
        'ñ' | 'ń' | 'ň' => 'n',
        'ò' | 'ó' | 'ô' | 'õ' | 'ö' | 'ø' | 'ō' => 'o',
        'ù' | 'ú' | 'û' | 'ü' | 'ū' | 'ů' => 'u',
        'ý' | 'ÿ' => 'y',
        'š' | 'ś' => 's',
        'ž' | 'ź' | 'ż' => 'z',
        'ł' => 'l',
        'ř' => 'r',
        'ď' => 'd',
        'ť' => 't',
        other => other,
    }
}

/// Computes blind indexes under one appliance index key.
pub struct BlindIndexer {
    mac: Mac,
}

impl BlindIndexer {
    pub fn new(key: zeroize::Zeroizing<[u8; 32]>) -> Self {
        BlindIndexer {
            mac: Mac::new(key.as_ref()),
        }
    }

    /// The 16-byte index of `value`, or `None` if it normalises to nothing.
    pub fn index(&self, field: BlindField, territory: &str, value: &str) -> Option<Vec<u8>> {
        let norm = field.normalise(value)?;
        let mac = self.mac.sign(&[
            b"hema3n-bi/v1\0",
            field.label().as_bytes(),
            b"\0",
            territory.as_bytes(),
            b"\0",
            norm.as_bytes(),
        ]);
        Some(mac[..16].to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ix() -> BlindIndexer {
        BlindIndexer::new(zeroize::Zeroizing::new([5u8; 32]))
    }

    #[test]
    fn last_name_variants_share_an_index() {
        let i = ix();
        let a = i.index(BlindField::LastName, "T1", "O'Brien").unwrap();
        for v in ["o brien", "OBRIEN", " Obrien ", "Ó'Brién"] {
            assert_eq!(i.index(BlindField::LastName, "T1", v).unwrap(), a, "{v}");
        }
        assert_ne!(i.index(BlindField::LastName, "T1", "Brien").unwrap(), a);
    }

    #[test]
    fn territory_and_field_separate_domains() {
        let i = ix();
        let a = i.index(BlindField::Mrn, "T1", "12-34").unwrap();
        assert_eq!(a, i.index(BlindField::Mrn, "T1", "1234").unwrap());
        assert_ne!(a, i.index(BlindField::Mrn, "T2", "1234").unwrap());
        assert_ne!(a, i.index(BlindField::LastName, "T1", "1234").unwrap());
    }

    #[test]
    fn empty_terms_have_no_index() {
        assert!(ix().index(BlindField::LastName, "T1", " -' ").is_none());
    }
}
