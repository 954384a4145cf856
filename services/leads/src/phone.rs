//! Mainland mobile numbers, as the CRM keys leads by them.
//!
//! Customers type numbers every way: with spaces, dashes, brackets, a `+86` or `0086` prefix.
//! [`normalize`] strips those; [`mainland_mobile`] accepts only `1[3-9]` followed by nine digits
//! (the original system's rule), so a lead is never created for a landline or a typo.

/// Why an action got no lead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoLead {
    MissingPhone,
    InvalidPhone,
}

impl NoLead {
    pub fn as_str(self) -> &'static str {
        match self {
            NoLead::MissingPhone => "missing_phone",
            NoLead::InvalidPhone => "invalid_phone",
        }
    }
}

/// Remove separators and the country prefix.
pub fn normalize(raw: &str) -> String {
    let compact: String = raw
        .chars()
        .filter(|c| !c.is_whitespace() && !matches!(c, '-' | '(' | ')' | '（' | '）' | '.'))
        .collect();
    let rest = compact
        .strip_prefix("+86")
        .or_else(|| compact.strip_prefix("0086"))
        .unwrap_or(&compact);
    rest.to_string()
}

/// The normalised number if it is a valid mainland mobile, else why not.
pub fn mainland_mobile(raw: Option<&str>) -> Result<String, NoLead> {
    let raw = raw
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or(NoLead::MissingPhone)?;
    let n = normalize(raw);
    let b = n.as_bytes();
    let valid = b.len() == 11
        && b[0] == b'1'
        && (b'3'..=b'9').contains(&b[1])
        && b.iter().all(u8::is_ascii_digit);
    if valid {
        Ok(n)
    } else {
        Err(NoLead::InvalidPhone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_the_ways_people_write_numbers() {
        for raw in [
            "13800138000",
            " 138 0013 8000 ",
            "138-0013-8000",
            "+86 138 0013 8000",
            "0086-13800138000",
            "+86(138)00138000",
        ] {
            assert_eq!(
                mainland_mobile(Some(raw)),
                Ok("13800138000".into()),
                "{raw}"
            );
        }
    }

    #[test]
    fn refuses_what_is_not_a_mainland_mobile() {
        assert_eq!(mainland_mobile(None), Err(NoLead::MissingPhone));
        assert_eq!(mainland_mobile(Some("  ")), Err(NoLead::MissingPhone));
        for raw in [
            "12800138000",
            "1380013800",
            "138001380000",
            "010-66888866",
            "abc",
            "１３８００１３８０００",
            "+85213800138000",
        ] {
            assert_eq!(
                mainland_mobile(Some(raw)),
                Err(NoLead::InvalidPhone),
                "{raw}"
            );
        }
    }

    proptest! {
        #[test]
        fn any_valid_number_survives_decoration(second in 3u8..=9, rest in "[0-9]{9}", prefix in prop::sample::select(vec!["", "+86", "0086", "+86 "]), sep in prop::sample::select(vec!["", " ", "-"])) {
            let n = format!("1{second}{rest}");
            let decorated = format!("{prefix}{}{sep}{}{sep}{}", &n[..3], &n[3..7], &n[7..]);
            prop_assert_eq!(mainland_mobile(Some(&decorated)), Ok(n));
        }

        #[test]
        fn whatever_is_accepted_is_eleven_digits(s in "\\PC{0,20}") {
            if let Ok(n) = mainland_mobile(Some(&s)) {
                prop_assert!(n.len() == 11 && n.bytes().all(|b| b.is_ascii_digit()) && n.starts_with('1'));
            }
        }
    }
}
