//! The rule of each keyword type as regular expressions, written once for every reader.
//!
//! [`super::validate`] matches values against these patterns, the gateway publishes the same
//! strings in its OpenAPI document, and the fuzzer in CI (schemathesis) generates and checks
//! values from them: what we refuse and what we document can only drift if this file does.
//! The patterns therefore use only syntax that Rust's `regex`, ECMA 262 (JSON Schema) and
//! Python's `re` read alike: classes of explicit ranges (`\uXXXX` escapes in the BMP, literal
//! characters beyond it), `[0-9]` rather than `\d`, no `.`, no look-around, and `^…$` anchors.
//! A rule that needs two conditions (no control character *and* not blank) is two patterns, all
//! of which must match (`allOf` in the schema).

use std::sync::LazyLock;

use regex::Regex;

use super::KeywordType;

/// Control characters (Unicode category Cc), refused in every value.
const CONTROL: &str = r"\x00-\x1f\x7f-\x9f";
/// The whitespace that `str::trim` removes, less the control characters already refused.
const WHITESPACE: &str = r"\u0020\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000";
/// ASCII punctuation: `!` to `/`, `:` to `@`, `[` to `` ` ``, `{` to `~`.
const ASCII_PUNCTUATION: &str = r"\x21-\x2f\x3a-\x40\x5b-\x60\x7b-\x7e";

/// Chinese characters (CJK ideographs), the unit WeChat's limits count Chinese in.
pub(super) const CHINESE_RANGES: [(char, char); 6] = [
    ('\u{4E00}', '\u{9FFF}'),   // CJK Unified Ideographs
    ('\u{3400}', '\u{4DBF}'),   // Extension A
    ('\u{F900}', '\u{FAFF}'),   // Compatibility Ideographs
    ('\u{20000}', '\u{2A6DF}'), // Extension B
    ('\u{2A700}', '\u{2EBEF}'), // Extensions C to F
    ('\u{30000}', '\u{3134F}'), // Extension G
];

/// What counts as a symbol: punctuation and signs in ASCII, Latin-1, general punctuation,
/// currency, arrows, mathematical operators, shapes and miscellaneous symbols, and the CJK and
/// full-width punctuation Chinese text uses (`，。！“”【】…`). Letters, digits and spaces never.
const SYMBOL_RANGES: [(char, char); 24] = [
    ('\u{21}', '\u{2F}'),
    ('\u{3A}', '\u{40}'),
    ('\u{5B}', '\u{60}'),
    ('\u{7B}', '\u{7E}'),
    ('\u{A1}', '\u{A9}'),
    ('\u{AB}', '\u{B1}'),
    ('\u{B4}', '\u{B4}'),
    ('\u{B6}', '\u{B8}'),
    ('\u{BB}', '\u{BB}'),
    ('\u{BF}', '\u{BF}'),
    ('\u{D7}', '\u{D7}'),
    ('\u{F7}', '\u{F7}'),
    ('\u{2010}', '\u{2027}'),
    ('\u{2030}', '\u{205E}'),
    ('\u{20A0}', '\u{20C0}'),
    ('\u{2190}', '\u{22FF}'),
    ('\u{25A0}', '\u{26FF}'),
    ('\u{3001}', '\u{3004}'),
    ('\u{3008}', '\u{3020}'),
    ('\u{FF01}', '\u{FF0F}'),
    ('\u{FF1A}', '\u{FF20}'),
    ('\u{FF3B}', '\u{FF40}'),
    ('\u{FF5B}', '\u{FF65}'),
    ('\u{FFE0}', '\u{FFEE}'),
];

/// Currency signs accepted at the start of an `amount`.
const CURRENCY: &str = "¥￥$€£₩₹₽₱฿";

/// The ranges as the body of a character class (without the brackets).
fn class(ranges: &[(char, char)]) -> String {
    let one = |c: char| {
        if u32::from(c) <= 0xFFFF {
            format!("\\u{:04x}", u32::from(c))
        } else {
            c.to_string()
        }
    };
    ranges
        .iter()
        .map(|&(a, b)| {
            if a == b {
                one(a)
            } else {
                format!("{}-{}", one(a), one(b))
            }
        })
        .collect()
}

/// No control character anywhere.
fn no_control() -> String {
    format!("^[^{CONTROL}]*$")
}

/// At least one character that is neither whitespace nor control (a search, not anchored).
fn not_blank() -> String {
    format!("[^{CONTROL}{WHITESPACE}]")
}

/// Month and day with their separators, the day limited by the month (29 for February in every
/// year: leap years are not worked out here).
fn month_day(after_month: &str) -> String {
    let d = |max: &str| format!("(?:0?[1-9]|1[0-9]|2[0-9]{max})");
    format!(
        "(?:(?:0?[13578]|1[02]){after_month}{}|(?:0?[469]|11){after_month}{}|0?2{after_month}{})",
        d("|3[01]"),
        d("|30"),
        d("")
    )
}

/// The three date forms WeChat shows: `2019年10月1日`, `2019-10-01`, `2019/10/01`.
fn dates() -> [String; 3] {
    [
        format!("[0-9]{{4}}年{}日", month_day("月")),
        format!("[0-9]{{4}}-{}", month_day("-")),
        format!("[0-9]{{4}}/{}", month_day("/")),
    ]
}

/// A 24-hour clock: `15:01`, `9:05`, `15:01:59`.
const CLOCK: &str = "(?:[01]?[0-9]|2[0-3]):[0-5][0-9](?::[0-5][0-9])?";

/// One point or a range of two joined by `~` (spaces around it allowed).
fn range_of(point: &str) -> String {
    format!("^{point}(?: *~ *{point})?$")
}

/// A `time` point: a clock, optionally after a date (no space needed after `日`).
fn time_point() -> String {
    let [cn, dash, slash] = dates();
    format!("(?:{cn} ?|{dash} |{slash} )?{CLOCK}")
}

/// A `date` point: a date, optionally followed by a clock.
fn date_point() -> String {
    let [cn, dash, slash] = dates();
    format!("(?:{cn}(?: ?{CLOCK})?|(?:{dash}|{slash})(?: {CLOCK})?)")
}

/// Digits with at most one decimal point between digits, `max` digits in all.
fn decimal(max: usize) -> String {
    let mut forms = vec![format!("[0-9]{{1,{max}}}")];
    forms.extend((1..max).map(|int| format!("[0-9]{{{int}}}\\.[0-9]{{1,{}}}", max - int)));
    format!("(?:{})", forms.join("|"))
}

/// The patterns a value of `kind` must all match, besides its length limit.
pub fn patterns(kind: KeywordType) -> Vec<String> {
    let chinese = class(&CHINESE_RANGES);
    let typed = match kind {
        KeywordType::Thing | KeywordType::Enum => None,
        KeywordType::Number => Some(r"^[0-9]+(?:\.[0-9]+)?$".to_owned()),
        KeywordType::Letter => Some("^[A-Za-z]+$".to_owned()),
        KeywordType::Symbol => Some(format!("^[{}]+$", class(&SYMBOL_RANGES))),
        KeywordType::CharacterString => Some(r"^[\x21-\x7e]+$".to_owned()),
        KeywordType::Time => Some(range_of(&time_point())),
        KeywordType::Date => Some(range_of(&date_point())),
        KeywordType::Amount => Some(format!(
            "^[{CURRENCY}]?{}元?$",
            decimal(super::AMOUNT_DIGITS_MAX)
        )),
        KeywordType::PhoneNumber => Some(format!("^[0-9 {ASCII_PUNCTUATION}]+$")),
        KeywordType::CarNumber => Some(format!("^[{chinese}]?[A-Za-z0-9]*[{chinese}]?$")),
        // With any Chinese character the whole name counts as Chinese: at most 10 then.
        KeywordType::Name => Some(format!(
            "^(?:[^{chinese}{CONTROL}]*|[^{CONTROL}]{{0,{}}})$",
            super::NAME_CHINESE_MAX
        )),
        KeywordType::Phrase => Some(format!("^[{chinese}]+$")),
    };
    let mut all = vec![no_control(), not_blank()];
    all.extend(typed);
    all
}

/// [`patterns`] compiled, per keyword type.
static COMPILED: LazyLock<Vec<(KeywordType, Vec<Regex>)>> = LazyLock::new(|| {
    KeywordType::all()
        .map(|kind| {
            let compiled = patterns(kind)
                .iter()
                .map(|p| Regex::new(p).expect("keyword patterns are valid regular expressions"))
                .collect();
            (kind, compiled)
        })
        .collect()
});

/// Whether `value` matches every pattern of `kind`.
pub(super) fn matches(kind: KeywordType, value: &str) -> bool {
    COMPILED
        .iter()
        .find(|(k, _)| *k == kind)
        .is_some_and(|(_, res)| res.iter().all(|re| re.is_match(value)))
}

/// Whether `c` is in one of the ranges.
pub(super) fn in_ranges(ranges: &[(char, char)], c: char) -> bool {
    ranges.iter().any(|&(a, b)| (a..=b).contains(&c))
}
